// Host entry points of the CUDA kernels, shared by the GPU module (fastconv._cuda) and the
// CPU harness module (fastconv._cuda_harness), which compiles the same .cu sources with g++.
//
// All pointers are device pointers (host pointers under the harness) to C-contiguous float32
// buffers whose sizes match the geometry; the caller has validated the geometry. Kernels are
// queued on the launch's stream (a cudaStream_t; ignored by the harness) and never
// synchronize. Kernels that reduce over pixels write per-split partial sums to workspace
// from the launch and then add them in a fixed order, so results are deterministic.
#pragma once
#ifdef FASTCONV_CUDA_HARNESS
#include "cuda/harness.h"
#define FASTCONV_CUDA_NS cuda_harness
#else
#define FASTCONV_CUDA_NS cuda
#endif
#include "geometry.h"

namespace fastconv::FASTCONV_CUDA_NS {

using Stream = void*;

// What a kernel call needs besides its buffers: the stream to queue on and scratch memory,
// valid for the work the call queues (device memory on the GPU, host memory under the
// harness; the binding module provides it).
class Launch {
 public:
  explicit Launch(Stream s) : stream(s) {}
  virtual ~Launch() = default;
  virtual float* workspace(int64_t floats) = 0;
  const Stream stream;
};

// Dense and grouped convolution; depthwise geometries (groups == c_in > 1) are handed to
// the depthwise kernels, 1x1 convolutions are the same implicit GEMM with a trivial gather.
void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                    float* y, Launch& launch);
void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                           Launch& launch);
void conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                            Launch& launch);
void bias_backward(const ConvGeometry& g, const float* dy, float* dbias, Launch& launch);
// dx, dw and (where dbias is not null) dbias: the three kernels queued in turn.
void conv2d_backward(const ConvGeometry& g, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* dbias, Launch& launch);

void pool2d_forward(const PoolGeometry& g, const float* x, float* y, Launch& launch);
void pool2d_backward(const PoolGeometry& g, const float* dy, const float* x, float* dx,
                     Launch& launch);
// Max/min pooling that saves each window's winner in a byte (PoolGeometry::saves_winners),
// and its backward from them.
void pool2d_forward_winners(const PoolGeometry& g, const float* x, float* y, uint8_t* winners,
                            Launch& launch);
void pool2d_backward_winners(const PoolGeometry& g, const float* dy, const uint8_t* winners,
                             float* dx, Launch& launch);

// Batch normalisation (see NormGeometry), with its fused activation.
void batch_norm_forward(const NormGeometry& g, const float* x, const float* gamma,
                        const float* beta, float* y, float* mean, float* var, Launch& launch);
void batch_norm_inference(const NormGeometry& g, const float* x, const float* mean,
                          const float* var, const float* gamma, const float* beta, float* y,
                          Launch& launch);
void batch_norm_backward(const NormGeometry& g, const float* dy, const float* x, const float* mean,
                         const float* var, const float* gamma, const float* beta, float* dx,
                         float* dgamma, float* dbeta, Launch& launch);

// Used by conv2d.cu.
bool is_depthwise(const ConvGeometry& g);
void depthwise_conv2d_forward(const ConvGeometry& g, const float* x, const float* w,
                              const float* bias, float* y, Stream stream);
// dx of any convolution by direct summation, one thread per dx cell (depthwise's own
// algorithm); skipped when run_if is not null and the device int it points at holds 0.
void direct_conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                                  const int* run_if, Stream stream);
int64_t depthwise_conv2d_backward_weight_workspace(const ConvGeometry& g);
void depthwise_conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                      float* dw, float* workspace, Stream stream);

// out[i] = sum over s in [0, splits) of partial[s*count + i], in that order.
void sum_partials(const float* partial, int64_t splits, int64_t count, float* out, Stream stream);

}  // namespace fastconv::FASTCONV_CUDA_NS
