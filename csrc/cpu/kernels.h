// The CPU kernel entry points. Each is compiled up to three times (see CMakeLists.txt): into
// fastconv::cpu::avx512 with AVX-512F/BW/DQ/VL, into fastconv::cpu::avx2 with AVX2/FMA (both
// on x86-64 only) and into fastconv::cpu::generic for any CPU; bindings.cpp picks one at
// import time (cpu/isa.h).
//
// All pointers are C-contiguous float32 buffers whose sizes match the geometry; the Python
// layer has validated the geometry and allocated the outputs.
#pragma once
#include "geometry.h"

#define FASTCONV_KERNEL_DECLARATIONS                                                              \
  void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,   \
                      float* y);                                                                  \
  void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx);  \
  void conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw); \
  void bias_backward(const ConvGeometry& g, const float* dy, float* dbias);                       \
  /* dx, dw and (where dbias is not null) dbias in one call, one pass where a kernel can: */      \
  void conv2d_backward(const ConvGeometry& g, const float* dy, const float* x, const float* w,    \
                       float* dx, float* dw, float* dbias);                                       \
  void depthwise_conv2d_forward(const ConvGeometry& g, const float* x, const float* w,            \
                                const float* bias, float* y);                                     \
  void depthwise_conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w,    \
                                       float* dx);                                                \
  void depthwise_conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x,   \
                                        float* dw);                                               \
  /* The one-pass dx, dw and dbias, where it applies; returns whether it ran. */                  \
  bool depthwise_conv2d_backward(const ConvGeometry& g, const float* dy, const float* x,          \
                                 const float* w, float* dx, float* dw, float* dbias);             \
  void pool2d_forward(const PoolGeometry& g, const float* x, float* y);                           \
  void pool2d_backward(const PoolGeometry& g, const float* dy, const float* x, float* dx);        \
  void pool2d_forward_winners(const PoolGeometry& g, const float* x, float* y, uint8_t* winners); \
  void pool2d_backward_winners(const PoolGeometry& g, const float* dy, const uint8_t* winners,    \
                               float* dx);                                                        \
  void batch_norm_forward(const NormGeometry& g, const float* x, const float* gamma,              \
                          const float* beta, float* y, float* mean, float* var);                  \
  void batch_norm_inference(const NormGeometry& g, const float* x, const float* mean,             \
                            const float* var, const float* gamma, const float* beta, float* y);   \
  void batch_norm_backward(const NormGeometry& g, const float* dy, const float* x,                \
                           const float* mean, const float* var, const float* gamma,               \
                           const float* beta, float* dx, float* dgamma, float* dbeta);            \
  /* GFLOP/s of one thread running independent register-only FMAs for about `seconds`: */         \
  /* the ceiling of the build's micro-kernels (a multiply and an add count as 2 FLOP). */         \
  double fma_peak_gflops(double seconds);

namespace fastconv::cpu {

namespace avx512 {
FASTCONV_KERNEL_DECLARATIONS
}
namespace avx2 {
FASTCONV_KERNEL_DECLARATIONS
}
namespace generic {
FASTCONV_KERNEL_DECLARATIONS
}
}  // namespace fastconv::cpu
