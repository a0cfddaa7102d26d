// Host entry points of the CUDA kernels, shared by the GPU module (fastconv._cuda) and the
// CPU harness module (fastconv._cuda_harness), which compiles the same .cu sources with g++.
//
// All pointers are device pointers (host pointers under the harness) to C-contiguous float32
// buffers whose sizes match the geometry; the caller has validated the geometry. Kernels are
// queued on `stream` (a cudaStream_t; ignored by the harness) and never synchronize. Kernels
// that reduce over pixels write per-split partial sums to a caller-provided workspace of
// *_workspace(g) floats and then add them in a fixed order, so results are deterministic.
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

// Dense and grouped convolution; depthwise geometries (groups == c_in > 1) are handed to
// the depthwise kernels, 1x1 convolutions are the same implicit GEMM with a trivial gather.
void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                    float* y, Stream stream);
void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                           Stream stream);
int64_t conv2d_backward_weight_workspace(const ConvGeometry& g);
void conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                            float* workspace, Stream stream);
int64_t bias_backward_workspace(const ConvGeometry& g);
void bias_backward(const ConvGeometry& g, const float* dy, float* dbias, float* workspace,
                   Stream stream);

void pool2d_forward(const PoolGeometry& g, const float* x, float* y, Stream stream);
int64_t pool2d_backward_workspace(const PoolGeometry& g);
void pool2d_backward(const PoolGeometry& g, const float* dy, const float* x, float* dx,
                     float* workspace, Stream stream);

// Batch normalisation of x viewed as (outer, channels, inner); batch_norm.cu has the contract.
// gamma and beta may be null (1 and 0), dx may be null (no input gradient).
int64_t batch_norm_forward_workspace(const ChannelShape& s);
void batch_norm_forward(const ChannelShape& s, const float* x, const float* gamma,
                        const float* beta, float eps, Activation act, float* y, float* mean,
                        float* var, float* workspace, Stream stream);
int64_t batch_norm_inference_workspace(const ChannelShape& s);
void batch_norm_inference(const ChannelShape& s, const float* x, const float* mean,
                          const float* var, const float* gamma, const float* beta, float eps,
                          Activation act, float* y, float* workspace, Stream stream);
int64_t batch_norm_backward_workspace(const ChannelShape& s);
void batch_norm_backward(const ChannelShape& s, const float* dy, const float* x,
                         const float* mean, const float* var, const float* gamma,
                         const float* beta, float eps, Activation act, float* dx, float* dgamma,
                         float* dbeta, float* workspace, Stream stream);

// Used by conv2d.cu.
bool is_depthwise(const ConvGeometry& g);
void depthwise_conv2d_forward(const ConvGeometry& g, const float* x, const float* w,
                              const float* bias, float* y, Stream stream);
void depthwise_conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w,
                                     float* dx, Stream stream);
int64_t depthwise_conv2d_backward_weight_workspace(const ConvGeometry& g);
void depthwise_conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                      float* dw, float* workspace, Stream stream);

// out[i] = sum over s in [0, splits) of partial[s*count + i], in that order.
void sum_partials(const float* partial, int64_t splits, int64_t count, float* out,
                  Stream stream);

}  // namespace fastconv::FASTCONV_CUDA_NS
