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
  m.def("batch_norm_forward_workspace", [](const ChannelFields& shape) {
    return kernels::batch_norm_forward_workspace(channel_shape(shape));
  }, py::arg("shape"), "Floats of workspace batch_norm_forward needs.");
  m.def("batch_norm_forward", [](Pointer x, Pointer gamma, Pointer beta, double eps, int act,
                                 Pointer y, Pointer mean, Pointer var, Pointer workspace,
                                 const ChannelFields& shape, Pointer s) {
    const auto [sh, e, a] = batch_norm_args(shape, eps, act);
    kernels::batch_norm_forward(sh, ptr(x), gamma ? ptr(gamma) : nullptr,
                                beta ? ptr(beta) : nullptr, e, a, ptr(y), ptr(mean), ptr(var),
                                ptr(workspace), stream(s));
  }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("activation"),
        py::arg("y"), py::arg("mean"), py::arg("var"), py::arg("workspace"), py::arg("shape"),
        py::arg("stream"));
  m.def("batch_norm_inference_workspace", [](const ChannelFields& shape) {
    return kernels::batch_norm_inference_workspace(channel_shape(shape));
  }, py::arg("shape"), "Floats of workspace batch_norm_inference needs.");
  m.def("batch_norm_inference", [](Pointer x, Pointer mean, Pointer var, Pointer gamma,
                                   Pointer beta, double eps, int act, Pointer y,
                                   Pointer workspace, const ChannelFields& shape, Pointer s) {
    const auto [sh, e, a] = batch_norm_args(shape, eps, act);
    kernels::batch_norm_inference(sh, ptr(x), ptr(mean), ptr(var), gamma ? ptr(gamma) : nullptr,
                                  beta ? ptr(beta) : nullptr, e, a, ptr(y), ptr(workspace),
                                  stream(s));
  }, py::arg("x"), py::arg("mean"), py::arg("var"), py::arg("gamma"), py::arg("beta"),
        py::arg("eps"), py::arg("activation"), py::arg("y"), py::arg("workspace"),
        py::arg("shape"), py::arg("stream"));
  m.def("batch_norm_backward_workspace", [](const ChannelFields& shape) {
    return kernels::batch_norm_backward_workspace(channel_shape(shape));
  }, py::arg("shape"), "Floats of workspace batch_norm_backward needs.");
  m.def("batch_norm_backward", [](Pointer dy, Pointer x, Pointer mean, Pointer var,
                                  Pointer gamma, Pointer beta, double eps, int act, Pointer dx,
                                  Pointer dgamma, Pointer dbeta, Pointer workspace,
                                  const ChannelFields& shape, Pointer s) {
    const auto [sh, e, a] = batch_norm_args(shape, eps, act);
    kernels::batch_norm_backward(sh, ptr(dy), ptr(x), ptr(mean), ptr(var),
                                 gamma ? ptr(gamma) : nullptr, beta ? ptr(beta) : nullptr, e, a,
                                 dx ? ptr(dx) : nullptr, ptr(dgamma), ptr(dbeta), ptr(workspace),
                                 stream(s));
  }, py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("var"), py::arg("gamma"),
        py::arg("beta"), py::arg("eps"), py::arg("activation"), py::arg("dx"), py::arg("dgamma"),
        py::arg("dbeta"), py::arg("workspace"), py::arg("shape"), py::arg("stream"));
}
