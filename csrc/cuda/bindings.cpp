// fastconv._cuda: the CUDA kernels behind the op list of op_bindings.h. Buffers are device
// arrays (anything with __cuda_array_interface__: CuPy, PyTorch, Numba) on the current GPU;
// kernels are queued on `stream` and nothing synchronizes. fastconv/_gpu.py picks the
// device and passes CuPy's current stream.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "binding_support.h"
#include "cuda/device.h"
#include "cuda/kernels.h"

namespace py = pybind11;

namespace {

namespace kernels = fastconv::cuda;

kernels::Stream as_stream(std::uintptr_t s) { return reinterpret_cast<kernels::Stream>(s); }

// How op_bindings.h reads buffers and runs kernels here.
struct Backend {
  static fastconv::bindings::View view(const py::handle& object, const char* name,
                                       fastconv::bindings::Dtype t);
  static void zero(float* p, int64_t count, std::uintptr_t stream) {
    kernels::zero(p, count, as_stream(stream));
  }
  // A CUDA error becomes a RuntimeError naming the op and its geometry.
  template <class G, class Body>
  static void run(const char* name, const G& g, std::uintptr_t stream, Body&& body) {
    try {
      const auto launch = kernels::device_launch(as_stream(stream));
      body(*launch);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(std::string(name) + " (" + fastconv::bindings::describe(g) +
                            "): " + e.what());
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(name) + " (" + fastconv::bindings::describe(g) +
                               "): " + e.what());
    }
  }
};

}  // namespace

#define FASTCONV_KERNEL(name)                                   \
  [](kernels::Launch& launch, const auto& g, auto... buffers) { \
    kernels::name(g, buffers..., launch);                       \
  }
#include "op_bindings.h"

fastconv::bindings::View Backend::view(const py::handle& object, const char* name,
                                       fastconv::bindings::Dtype t) {
  if (!py::hasattr(object, "__cuda_array_interface__"))
    throw py::type_error(std::string(name) + " must be a CUDA array (CuPy), got " +
                         std::string(py::str(object.get_type().attr("__name__"))));
  const fastconv::bindings::View v = fastconv::bindings::cuda_view(object, name, t);
  if (v.size > 0) {
    try {
      kernels::require_current_device(v.data, name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }
  return v;
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastconv CUDA kernels (use the functional API with CuPy arrays)";
  fastconv::bindings::bind_ops<Backend>(m);
}
