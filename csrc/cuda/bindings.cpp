// fastconv._cuda: pybind11 bindings of the CUDA kernels on raw device pointers.
//
// fastconv/_gpu.py checks the CuPy arrays (dtype, contiguity, size, device) and passes their
// pointers, the current CuPy stream and, for reductions, a workspace it allocates from
// CuPy's pool (sizes from the *_workspace functions). This layer re-checks the geometry and
// queues the kernels; it never synchronizes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "pybind_checks.h"

namespace py = pybind11;
namespace kernels = fastconv::cuda;
using fastconv::ConvGeometry;
using fastconv::PoolGeometry;
using namespace fastconv::pybind_checks;

namespace {

using Pointer = std::uintptr_t;

template <class T = float>
T* ptr(Pointer p) { return reinterpret_cast<T*>(p); }

kernels::Stream stream(Pointer s) { return reinterpret_cast<kernels::Stream>(s); }

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastconv CUDA kernels on device pointers (use the functional API with CuPy arrays)";
  m.def("conv2d_forward", [](Pointer x, Pointer w, Pointer bias, Pointer y, const ConvFields& f,
                             Pointer s) {
    kernels::conv2d_forward(conv_geometry(f), ptr(x), ptr(w), bias ? ptr(bias) : nullptr, ptr(y),
                            stream(s));
  }, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("y"), py::arg("geometry"),
        py::arg("stream"));
  m.def("conv2d_backward_input", [](Pointer dy, Pointer w, Pointer dx, const ConvFields& f,
                                    Pointer s) {
    kernels::conv2d_backward_input(conv_geometry(f), ptr(dy), ptr(w), ptr(dx), stream(s));
  }, py::arg("dy"), py::arg("w"), py::arg("dx"), py::arg("geometry"), py::arg("stream"));
  m.def("conv2d_backward_weight_workspace", [](const ConvFields& f) {
    return kernels::conv2d_backward_weight_workspace(conv_geometry(f));
  }, py::arg("geometry"), "Floats of workspace conv2d_backward_weight needs.");
  m.def("conv2d_backward_weight", [](Pointer dy, Pointer x, Pointer dw, Pointer workspace,
                                     const ConvFields& f, Pointer s) {
    kernels::conv2d_backward_weight(conv_geometry(f), ptr(dy), ptr(x), ptr(dw), ptr(workspace),
                                    stream(s));
  }, py::arg("dy"), py::arg("x"), py::arg("dw"), py::arg("workspace"), py::arg("geometry"),
        py::arg("stream"));
  m.def("bias_backward_workspace", [](const ConvFields& f) {
    return kernels::bias_backward_workspace(conv_geometry(f));
  }, py::arg("geometry"), "Floats of workspace bias_backward needs.");
  m.def("bias_backward", [](Pointer dy, Pointer dbias, Pointer workspace, const ConvFields& f,
                            Pointer s) {
    kernels::bias_backward(conv_geometry(f), ptr(dy), ptr(dbias), ptr(workspace), stream(s));
  }, py::arg("dy"), py::arg("dbias"), py::arg("workspace"), py::arg("geometry"),
        py::arg("stream"));
  m.def("pool2d_forward", [](Pointer x, Pointer y, const PoolFields& f, Pointer s) {
    kernels::pool2d_forward(pool_geometry(f), ptr(x), ptr(y), stream(s));
  }, py::arg("x"), py::arg("y"), py::arg("geometry"), py::arg("stream"));
  m.def("pool2d_backward_workspace", [](const PoolFields& f) {
    return kernels::pool2d_backward_workspace(pool_geometry(f));
  }, py::arg("geometry"), "Floats of workspace pool2d_backward needs.");
  m.def("pool2d_backward", [](Pointer dy, Pointer x, Pointer dx, Pointer workspace,
                              const PoolFields& f, Pointer s) {
    kernels::pool2d_backward(pool_geometry(f), ptr(dy), ptr(x), ptr(dx), ptr(workspace),
                             stream(s));
  }, py::arg("dy"), py::arg("x"), py::arg("dx"), py::arg("workspace"), py::arg("geometry"),
        py::arg("stream"));
}
