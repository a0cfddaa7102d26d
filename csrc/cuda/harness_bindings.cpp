// fastconv._cuda_harness: the CUDA kernels compiled with the host compiler under
// cuda/harness.h, bound by op_bindings.h like fastconv._cpu and fastconv._cuda, so that the
// tests can run the whole functional API on them with NumPy arrays (see
// tests/test_cuda_harness.py) and _gpu.py's path with a stand-in for CuPy (see
// tests/test_gpu_backend_on_cpu.py). Slow by design; for checking, never for use.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <vector>

// The harness defines __global__, __host__ and friends: it comes before any shared header.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

#include "binding_support.h"

namespace py = pybind11;
namespace kernels = fastconv::cuda_harness;

namespace {

// Workspace in host memory, as long as the call.
class HostLaunch final : public kernels::Launch {
 public:
  HostLaunch() : Launch(nullptr) {}
  float* workspace(int64_t floats) override {
    blocks_.emplace_back(static_cast<size_t>(floats));
    return blocks_.back().data();
  }

 private:
  std::vector<std::vector<float>> blocks_;
};

// How op_bindings.h reads buffers and runs kernels here: NumPy arrays, or host memory behind
// __cuda_array_interface__ (the tests' stand-in for CuPy), and the GIL held throughout,
// since the harness keeps one block's state in process-wide variables.
struct Backend {
  static fastconv::bindings::View view(const py::handle& object, const char* name,
                                       fastconv::bindings::Dtype t) {
    return py::hasattr(object, "__cuda_array_interface__")
               ? fastconv::bindings::cuda_view(object, name, t)
               : fastconv::bindings::host_view(object, name, t);
  }
  static void zero(float* p, int64_t count, std::uintptr_t) { std::fill(p, p + count, 0.f); }
  template <class G, class Body>
  static void run(const char*, const G&, std::uintptr_t, Body&& body) {
    HostLaunch launch;
    body(launch);
  }
};

}  // namespace

#define FASTCONV_KERNEL(name)                                   \
  [](kernels::Launch& launch, const auto& g, auto... buffers) { \
    kernels::name(g, buffers..., launch);                       \
  }
#include "op_bindings.h"

namespace {

// Self-tests of the harness itself: kernels that are right or wrong on purpose.
constexpr int kSelfTestThreads = 64;

// Each thread publishes its index in shared memory and reads its right neighbour's; without
// the barrier the read can come before the neighbour's write.
__global__ void neighbour_exchange_kernel(int* out, bool barrier) {
  __shared__ int slots[kSelfTestThreads];
  const int t = static_cast<int>(threadIdx.x);
  slots[t] = static_cast<int>(blockIdx.x) * kSelfTestThreads + t;
  if (barrier) __syncthreads();
  out[blockIdx.x * kSelfTestThreads + t] = slots[(t + 1) % kSelfTestThreads];
}

// Thread 0 leaves before the barrier the others wait at: undefined behaviour on a GPU.
__global__ void divergent_barrier_kernel() {
  if (threadIdx.x == 0) return;
  __syncthreads();
}

std::vector<int> neighbour_exchange(int blocks, bool barrier) {
  std::vector<int> out(static_cast<size_t>(blocks) * kSelfTestThreads, -1);
  FC_LAUNCH(neighbour_exchange_kernel, dim3(blocks), dim3(kSelfTestThreads), nullptr)
  (out.data(), barrier);
  return out;
}

void divergent_barrier() {
  FC_LAUNCH(divergent_barrier_kernel, dim3(1), dim3(kSelfTestThreads), nullptr)();
}

}  // namespace

PYBIND11_MODULE(_cuda_harness, m) {
  m.doc() = "fastconv CUDA kernels run on the CPU by the execution harness (tests only)";
  fastconv::bindings::bind_ops<Backend>(m);
  m.def("selftest_neighbour_exchange", &neighbour_exchange, py::arg("blocks"), py::arg("barrier"),
        "Harness self-test: each thread reads its right neighbour's shared slot.");
  m.def("selftest_divergent_barrier", &divergent_barrier,
        "Harness self-test: raises, as one thread skips a barrier the others wait at.");
}
