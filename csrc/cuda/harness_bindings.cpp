// fastconv._cuda_harness: the CUDA kernels compiled with the host compiler under
// cuda/harness.h, bound with the same functions and signatures as fastconv._cpu so that the
// tests can run the whole functional API on them with NumPy arrays (see
// tests/test_cuda_harness.py). Slow by design; for checking, never for use. The GIL stays
// held: the harness keeps one block's state in process-wide variables.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <vector>

#include "cuda/common.cuh"

#include "cuda/kernels.h"
#include "pybind_checks.h"

namespace py = pybind11;
namespace kernels = fastconv::cuda_harness;
using fastconv::ConvGeometry;
using fastconv::PoolGeometry;
using namespace fastconv::pybind_checks;

namespace {


void conv2d_forward(const py::array& x, const py::array& w, const py::object& bias,
                    const py::array& y, const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float* b = checked_or_null(bias, g.c_out, "bias");
  const float *px = checked(x, g.x_size(), "x"), *pw = checked(w, g.w_size(), "w");
  float* py_ = output(y, g.y_size(), "y");
  if (g.n > 0) kernels::conv2d_forward(g, px, pw, b, py_, nullptr);
}

void conv2d_backward_input(const py::array& dy, const py::array& w, const py::array& dx,
                           const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float *pdy = checked(dy, g.y_size(), "dy"), *pw = checked(w, g.w_size(), "w");
  float* pdx = output(dx, g.x_size(), "dx");
  if (g.n > 0) kernels::conv2d_backward_input(g, pdy, pw, pdx, nullptr);
}

void conv2d_backward_weight(const py::array& dy, const py::array& x, const py::array& dw,
                            const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float *pdy = checked(dy, g.y_size(), "dy"), *px = checked(x, g.x_size(), "x");
  float* pdw = output(dw, g.w_size(), "dw");
  if (g.n == 0) return std::fill(pdw, pdw + g.w_size(), 0.f);
  std::vector<float> workspace(kernels::conv2d_backward_weight_workspace(g));
  kernels::conv2d_backward_weight(g, pdy, px, pdw, workspace.data(), nullptr);
}

void bias_backward(const py::array& dy, const py::array& dbias, const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float* pdy = checked(dy, g.y_size(), "dy");
  float* pdb = output(dbias, g.c_out, "dbias");
  if (g.n == 0) return std::fill(pdb, pdb + g.c_out, 0.f);
  std::vector<float> workspace(kernels::bias_backward_workspace(g));
  kernels::bias_backward(g, pdy, pdb, workspace.data(), nullptr);
}

void pool2d_forward(const py::array& x, const py::array& y, const PoolFields& f) {
  const PoolGeometry g = pool_geometry(f);
  const float* px = checked(x, g.x_size(), "x");
  float* py_ = output(y, g.y_size(), "y");
  if (g.n > 0) kernels::pool2d_forward(g, px, py_, nullptr);
}

void pool2d_backward(const py::array& dy, const py::array& x, const py::array& dx,
                     const PoolFields& f) {
  const PoolGeometry g = pool_geometry(f);
  const float *pdy = checked(dy, g.y_size(), "dy"), *px = checked(x, g.x_size(), "x");
  float* pdx = output(dx, g.x_size(), "dx");
  if (g.n == 0) return;
  std::vector<float> workspace(kernels::pool2d_backward_workspace(g));
  kernels::pool2d_backward(g, pdy, px, pdx, workspace.data(), nullptr);
}

void batch_norm_forward(const py::array& x, const py::object& gamma, const py::object& beta,
                        double eps, int act, const py::array& y, const py::array& mean,
                        const py::array& var, const ChannelFields& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const BatchNormForwardBuffers b(s, x, gamma, beta, y, mean, var);
  std::vector<float> workspace(kernels::batch_norm_forward_workspace(s));
  kernels::batch_norm_forward(s, b.x, b.gamma, b.beta, e, a, b.y, b.mean, b.var,
                              workspace.data(), nullptr);
}

void batch_norm_inference(const py::array& x, const py::array& mean, const py::array& var,
                          const py::object& gamma, const py::object& beta, double eps, int act,
                          const py::array& y, const ChannelFields& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const BatchNormInferenceBuffers b(s, x, mean, var, gamma, beta, y);
  std::vector<float> workspace(kernels::batch_norm_inference_workspace(s));
  kernels::batch_norm_inference(s, b.x, b.mean, b.var, b.gamma, b.beta, e, a, b.y,
                                workspace.data(), nullptr);
}

void batch_norm_backward(const py::array& dy, const py::array& x, const py::array& mean,
                         const py::array& var, const py::object& gamma, const py::object& beta,
                         double eps, int act, const py::object& dx, const py::array& dgamma,
                         const py::array& dbeta, const ChannelFields& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const BatchNormBackwardBuffers b(s, dy, x, mean, var, gamma, beta, dx, dgamma, dbeta);
  std::vector<float> workspace(kernels::batch_norm_backward_workspace(s));
  kernels::batch_norm_backward(s, b.dy, b.x, b.mean, b.var, b.gamma, b.beta, e, a, b.dx,
                               b.dgamma, b.dbeta, workspace.data(), nullptr);
}

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
  FC_LAUNCH(neighbour_exchange_kernel, dim3(blocks), dim3(kSelfTestThreads), nullptr)(out.data(), barrier);
  return out;
}

void divergent_barrier() {
  FC_LAUNCH(divergent_barrier_kernel, dim3(1), dim3(kSelfTestThreads), nullptr)();
}

}  // namespace

PYBIND11_MODULE(_cuda_harness, m) {
  m.doc() = "fastconv CUDA kernels run on the CPU by the execution harness (tests only)";
  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("w"), py::arg("bias"),
        py::arg("y"), py::arg("geometry"));
  m.def("conv2d_backward_input", &conv2d_backward_input, py::arg("dy"), py::arg("w"),
        py::arg("dx"), py::arg("geometry"));
  m.def("conv2d_backward_weight", &conv2d_backward_weight, py::arg("dy"), py::arg("x"),
        py::arg("dw"), py::arg("geometry"));
  m.def("bias_backward", &bias_backward, py::arg("dy"), py::arg("dbias"), py::arg("geometry"));
  m.def("pool2d_forward", &pool2d_forward, py::arg("x"), py::arg("y"), py::arg("geometry"));
  m.def("pool2d_backward", &pool2d_backward, py::arg("dy"), py::arg("x"), py::arg("dx"),
        py::arg("geometry"));
  m.def("batch_norm_forward", &batch_norm_forward, py::arg("x"), py::arg("gamma"),
        py::arg("beta"), py::arg("eps"), py::arg("activation"), py::arg("y"), py::arg("mean"),
        py::arg("var"), py::arg("shape"));
  m.def("batch_norm_inference", &batch_norm_inference, py::arg("x"), py::arg("mean"),
        py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("eps"),
        py::arg("activation"), py::arg("y"), py::arg("shape"));
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"),
        py::arg("mean"), py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("eps"),
        py::arg("activation"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"),
        py::arg("shape"));
  m.def("selftest_neighbour_exchange", &neighbour_exchange, py::arg("blocks"), py::arg("barrier"),
        "Harness self-test: each thread reads its right neighbour's shared slot.");
  m.def("selftest_divergent_barrier", &divergent_barrier,
        "Harness self-test: raises, as one thread skips a barrier the others wait at.");
}
