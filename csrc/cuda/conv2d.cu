// Dense and grouped 2-D convolution on the GPU: forward, backward-input, backward-weight
// and the bias gradient, each as an implicit GEMM (see implicit_gemm.cuh) per group.
//
// Sizes per group: Cin_g = C_in/G input and Cout_g = C_out/G output channels, T = KH*KW
// taps, P = N*OH*OW output pixels.
//   forward          C[P, Cout_g]           = A: x gathered per tap  x  B: weights, k = Cin_g*T
//   backward-input   C[N*H*W, Cin_g]        = A: dy gathered per tap x  B: weights, k = Cout_g*T
//   backward-weight  C[Cout_g, Cin_g*T]     = A: dy  x  B: x gathered per tap, k = P
// The k order of a filter is channels-outer for NCHW (contiguous weights) and channels-inner
// for NHWC (contiguous activations). Backward-input gathers (each input cell collects the
// outputs that read it) instead of scattering, and backward-weight cuts its long pixel
// range into splits whose partial sums are added in a fixed order: no atomics anywhere.
#include <stdexcept>
#include <string>

#include "cuda/implicit_gemm.cuh"

namespace fastconv::FASTCONV_CUDA_NS {
namespace {

// What the three problems share: geometry, per-group sizes and the filter index order.
template <bool kNhwc>
struct ConvProblem {
  ConvGeometry g;
  int64_t m, n, k, groups;
  int cin_g, cout_g, taps;

  explicit ConvProblem(const ConvGeometry& geometry)
      : g(geometry), m(0), n(0), k(0), groups(geometry.groups),
        cin_g(static_cast<int>(geometry.cin_per_group())),
        cout_g(static_cast<int>(geometry.cout_per_group())),
        taps(static_cast<int>(geometry.kh * geometry.kw)) {}

  __device__ void split_filter(int64_t k_index, int channels, int& c, int& ky, int& kx) const {
    split_filter_index(static_cast<int>(k_index), channels, static_cast<int>(g.kw), taps, kNhwc,
                       c, ky, kx);
  }
  // Offset of weight (o, c, ky, kx), o counted over all groups.
  __device__ int64_t w_offset(int64_t o, int c, int ky, int kx) const {
    return (o * cin_g + c) * taps + ky * g.kw + kx;
  }
};

// A pixel of a GEMM row, kept small: each thread holds several for a whole block.
struct Pixel {
  int64_t b;  // -1: past the last pixel
  int y, x;
  __device__ bool valid() const { return b >= 0; }
};

__device__ __forceinline__ Pixel pixel(int64_t p, int64_t count, int64_t height, int64_t width) {
  int64_t b, y, x;
  ConvGeometry::split_pixel(p < count ? p : 0, height, width, b, y, x);
  return {p < count ? b : -1, static_cast<int>(y), static_cast<int>(x)};
}

struct Channel {
  int c;
  bool valid;
};

template <bool kNhwc>
struct ForwardProblem : ConvProblem<kNhwc> {
  using ConvProblem<kNhwc>::g;
  static constexpr bool kAByM = !kNhwc, kBByN = false, kStoreByM = !kNhwc;
  using RowA = Pixel;    // an output pixel
  using ColB = Channel;  // an output channel of the group
  const float *x, *w, *bias;
  float* y;

  ForwardProblem(const ConvGeometry& geometry, const float* x_, const float* w_,
                 const float* bias_, float* y_)
      : ConvProblem<kNhwc>(geometry), x(x_), w(w_), bias(bias_), y(y_) {
    this->m = g.n * g.oh * g.ow;
    this->n = this->cout_g;
    this->k = static_cast<int64_t>(this->cin_g) * this->taps;
  }
  __device__ RowA row_a(int64_t p, int) const { return pixel(p, this->m, g.oh, g.ow); }
  __device__ float a(const RowA& r, int64_t k, int group) const {
    int c, ky, kx;
    this->split_filter(k, this->cin_g, c, ky, kx);
    const int64_t iy = g.in_row(r.y, ky), ix = g.in_col(r.x, kx);
    if (!r.valid() || iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.f;
    return x[g.x_offset(r.b, static_cast<int64_t>(group) * this->cin_g + c, iy, ix)];
  }
  __device__ ColB col_b(int64_t o, int) const { return {static_cast<int>(o), o < this->n}; }
  __device__ float b(const ColB& col, int64_t k, int group) const {
    if (!col.valid) return 0.f;
    int c, ky, kx;
    this->split_filter(k, this->cin_g, c, ky, kx);
    return w[this->w_offset(static_cast<int64_t>(group) * this->cout_g + col.c, c, ky, kx)];
  }
  __device__ void store(int64_t p, int64_t o, int group, int64_t, float v) const {
    int64_t b, oy, ox;
    ConvGeometry::split_pixel(p, g.oh, g.ow, b, oy, ox);
    const int64_t oc = static_cast<int64_t>(group) * this->cout_g + o;
    y[g.y_offset(b, oc, oy, ox)] = bias ? v + bias[oc] : v;
  }
};

template <bool kNhwc>
struct BackwardInputProblem : ConvProblem<kNhwc> {
  using ConvProblem<kNhwc>::g;
  static constexpr bool kAByM = !kNhwc, kBByN = false, kStoreByM = !kNhwc;
  using RowA = Pixel;    // an input pixel
  using ColB = Channel;  // an input channel of the group
  const float *dy, *w;
  float* dx;

  BackwardInputProblem(const ConvGeometry& geometry, const float* dy_, const float* w_, float* dx_)
      : ConvProblem<kNhwc>(geometry), dy(dy_), w(w_), dx(dx_) {
    this->m = g.n * g.h * g.w;
    this->n = this->cin_g;
    this->k = static_cast<int64_t>(this->cout_g) * this->taps;
  }
  __device__ RowA row_a(int64_t p, int) const { return pixel(p, this->m, g.h, g.w); }
  // dy of the output that reads input pixel r at tap (ky, kx), if there is one.
  __device__ float a(const RowA& r, int64_t k, int group) const {
    int o, ky, kx;
    this->split_filter(k, this->cout_g, o, ky, kx);
    const int64_t oy = g.out_row(r.y, ky), ox = g.out_col(r.x, kx);
    if (!r.valid() || oy < 0 || ox < 0) return 0.f;
    return dy[g.y_offset(r.b, static_cast<int64_t>(group) * this->cout_g + o, oy, ox)];
  }
  __device__ ColB col_b(int64_t c, int) const { return {static_cast<int>(c), c < this->n}; }
  __device__ float b(const ColB& col, int64_t k, int group) const {
    if (!col.valid) return 0.f;
    int o, ky, kx;
    this->split_filter(k, this->cout_g, o, ky, kx);
    return w[this->w_offset(static_cast<int64_t>(group) * this->cout_g + o, col.c, ky, kx)];
  }
  __device__ void store(int64_t p, int64_t c, int group, int64_t, float v) const {
    int64_t b, iy, ix;
    ConvGeometry::split_pixel(p, g.h, g.w, b, iy, ix);
    dx[g.x_offset(b, static_cast<int64_t>(group) * this->cin_g + c, iy, ix)] = v;
  }
};

template <bool kNhwc>
struct BackwardWeightProblem : ConvProblem<kNhwc> {
  using ConvProblem<kNhwc>::g;
  static constexpr bool kAByM = kNhwc, kBByN = kNhwc, kStoreByM = false;
  struct RowA {
    int64_t o;  // output channel, over all groups once the group is known
    bool valid;
  };
  struct ColB {
    int c, ky, kx;
    bool valid;
  };
  const float *dy, *x;
  float* partial;  // [split][C_out * Cin_g * T], each split in dw's own layout

  BackwardWeightProblem(const ConvGeometry& geometry, const float* dy_, const float* x_,
                        float* partial_)
      : ConvProblem<kNhwc>(geometry), dy(dy_), x(x_), partial(partial_) {
    this->m = this->cout_g;
    this->n = static_cast<int64_t>(this->cin_g) * this->taps;
    this->k = g.n * g.oh * g.ow;
  }
  __device__ RowA row_a(int64_t o, int group) const {
    return {static_cast<int64_t>(group) * this->cout_g + o, o < this->m};
  }
  __device__ float a(const RowA& r, int64_t p, int) const {
    if (!r.valid) return 0.f;
    int64_t b, oy, ox;
    ConvGeometry::split_pixel(p, g.oh, g.ow, b, oy, ox);
    return dy[g.y_offset(b, r.o, oy, ox)];
  }
  __device__ ColB col_b(int64_t n_index, int group) const {
    ColB col;
    col.valid = n_index < this->n;
    this->split_filter(col.valid ? n_index : 0, this->cin_g, col.c, col.ky, col.kx);
    col.c += group * this->cin_g;
    return col;
  }
  __device__ float b(const ColB& col, int64_t p, int) const {
    int64_t b, oy, ox;
    ConvGeometry::split_pixel(p, g.oh, g.ow, b, oy, ox);
    const int64_t iy = g.in_row(oy, col.ky), ix = g.in_col(ox, col.kx);
    if (!col.valid || iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.f;
    return x[g.x_offset(b, col.c, iy, ix)];
  }
  __device__ void store(int64_t o, int64_t n_index, int group, int64_t split, float v) const {
    int c, ky, kx;
    this->split_filter(n_index, this->cin_g, c, ky, kx);
    const int64_t oc = static_cast<int64_t>(group) * this->cout_g + o;
    partial[split * g.w_size() + this->w_offset(oc, c, ky, kx)] = v;
  }
};

void require_small_filter(const ConvGeometry& g, const char* what) {
  // Filter indices are 32-bit (split_filter_index); a filter this large is never practical.
  if (g.c_in * g.kh * g.kw >= (int64_t{1} << 31) || g.c_out * g.kh * g.kw >= (int64_t{1} << 31))
    throw std::invalid_argument(std::string(what) + ": filter too large for the CUDA kernels");
}

// Backward-weight splits: enough blocks to fill a large GPU, each split at least kMinPixels
// long. Depends on the problem only, so results do not change from one GPU to another.
constexpr int64_t kTargetBlocks = 512, kMinPixels = 512;

int64_t weight_chunk(const ConvGeometry& g) {
  const int64_t m = g.cout_per_group(), n = g.cin_per_group() * g.kh * g.kw;
  const int64_t pixels = g.n * g.oh * g.ow;
  const int64_t tile = use_large_tile(m, n) ? LargeTile::BM : SmallTile::BM;
  const int64_t blocks = ceil_div(m, tile) * ceil_div(n, tile) * g.groups;
  int64_t splits = ceil_div(kTargetBlocks, blocks);
  splits = splits < ceil_div(pixels, kMinPixels) ? splits : ceil_div(pixels, kMinPixels);
  splits = splits < 65535 / g.groups ? splits : 65535 / g.groups;
  return split_chunk(pixels, splits > 0 ? splits : 1);
}

int64_t weight_splits(const ConvGeometry& g) {
  return ceil_div(g.n * g.oh * g.ow, weight_chunk(g));
}

// Bias gradient: per-split sums of dy over pixels, then sum_partials. NCHW: a block per
// (channel, split), threads along the pixels of a plane. NHWC: a block per (32 channels,
// split), 8 rows of threads each reading 32 neighbouring channels of a pixel.
constexpr int kBiasThreads = 256, kBiasLanes = 32, kBiasPixels = 4096;

template <bool kNhwc>
__global__ void __launch_bounds__(kBiasThreads)
    bias_partials_kernel(const ConvGeometry g, const float* dy, int64_t chunk, float* partial) {
  __shared__ float scratch[kBiasThreads];
  const int64_t plane = g.oh * g.ow, pixels = g.n * plane;
  int64_t begin, end;
  split_range(blockIdx.y, chunk, pixels, begin, end);
  const int t = static_cast<int>(threadIdx.x);
  if (kNhwc) {
    constexpr int kRows = kBiasThreads / kBiasLanes;
    const int64_t o = static_cast<int64_t>(blockIdx.x) * kBiasLanes + t % kBiasLanes;
    float sum = 0.f;
    if (o < g.c_out)
      for (int64_t p = begin + t / kBiasLanes; p < end; p += kRows) sum += dy[p * g.c_out + o];
    scratch[t] = sum;
    __syncthreads();
    if (t < kBiasLanes && o < g.c_out) {
      float total = 0.f;
      for (int r = 0; r < kRows; ++r) total += scratch[r * kBiasLanes + t];
      partial[blockIdx.y * g.c_out + o] = total;
    }
  } else {
    const int64_t o = blockIdx.x;
    float sum = 0.f;
    for (int64_t p = begin + t; p < end; p += kBiasThreads)
      sum += dy[(p / plane * g.c_out + o) * plane + p % plane];
    const float total = block_sum(sum, scratch);
    if (t == 0) partial[blockIdx.y * g.c_out + o] = total;
  }
}

int64_t bias_chunk(const ConvGeometry& g) { return pixel_chunk(g.n * g.oh * g.ow, kBiasPixels); }
int64_t bias_splits(const ConvGeometry& g) { return ceil_div(g.n * g.oh * g.ow, bias_chunk(g)); }

__global__ void sum_partials_kernel(const float* partial, int64_t splits, int64_t count,
                                    float* out) {
  for (int64_t i = first_element(); i < count; i += element_step()) {
    float total = 0.f;
    for (int64_t s = 0; s < splits; ++s) total += partial[s * count + i];
    out[i] = total;
  }
}

}  // namespace

void check_launch(const char* kernel) {
#ifndef FASTCONV_CUDA_HARNESS
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + ": " + cudaGetErrorString(err));
#else
  (void)kernel;
#endif
}

void sum_partials(const float* partial, int64_t splits, int64_t count, float* out,
                  Stream stream) {
  FC_LAUNCH(sum_partials_kernel, element_grid(count), dim3(kElementThreads), stream)(
      partial, splits, count, out);
  check_launch("sum_partials");
}

void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                    float* y, Stream stream) {
  if (is_depthwise(g)) return depthwise_conv2d_forward(g, x, w, bias, y, stream);
  require_small_filter(g, "conv2d_forward");
  if (g.channels_last) {
    const ForwardProblem<true> p(g, x, w, bias, y);
    run_implicit_gemm(p, p.k, stream, "conv2d_forward");
  } else {
    const ForwardProblem<false> p(g, x, w, bias, y);
    run_implicit_gemm(p, p.k, stream, "conv2d_forward");
  }
}

void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                           Stream stream) {
  if (is_depthwise(g)) return depthwise_conv2d_backward_input(g, dy, w, dx, stream);
  require_small_filter(g, "conv2d_backward_input");
  if (g.channels_last) {
    const BackwardInputProblem<true> p(g, dy, w, dx);
    run_implicit_gemm(p, p.k, stream, "conv2d_backward_input");
  } else {
    const BackwardInputProblem<false> p(g, dy, w, dx);
    run_implicit_gemm(p, p.k, stream, "conv2d_backward_input");
  }
}

int64_t conv2d_backward_weight_workspace(const ConvGeometry& g) {
  if (is_depthwise(g)) return depthwise_conv2d_backward_weight_workspace(g);
  const int64_t splits = weight_splits(g);
  return splits > 1 ? splits * g.w_size() : 0;
}

void conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                            float* workspace, Stream stream) {
  if (is_depthwise(g)) return depthwise_conv2d_backward_weight(g, dy, x, dw, workspace, stream);
  require_small_filter(g, "conv2d_backward_weight");
  const int64_t splits = weight_splits(g), chunk = weight_chunk(g);
  float* target = splits > 1 ? workspace : dw;  // one split writes dw directly
  if (g.channels_last) {
    run_implicit_gemm(BackwardWeightProblem<true>(g, dy, x, target), chunk, stream,
                      "conv2d_backward_weight");
  } else {
    run_implicit_gemm(BackwardWeightProblem<false>(g, dy, x, target), chunk, stream,
                      "conv2d_backward_weight");
  }
  if (splits > 1) sum_partials(workspace, splits, g.w_size(), dw, stream);
}

int64_t bias_backward_workspace(const ConvGeometry& g) { return bias_splits(g) * g.c_out; }

void bias_backward(const ConvGeometry& g, const float* dy, float* dbias, float* workspace,
                   Stream stream) {
  const int64_t splits = bias_splits(g), chunk = bias_chunk(g);
  if (g.channels_last) {
    const dim3 grid(static_cast<unsigned>(ceil_div(g.c_out, kBiasLanes)), static_cast<unsigned>(splits));
    FC_LAUNCH(bias_partials_kernel<true>, grid, dim3(kBiasThreads), stream)(g, dy, chunk, workspace);
  } else {
    const dim3 grid(static_cast<unsigned>(g.c_out), static_cast<unsigned>(splits));
    FC_LAUNCH(bias_partials_kernel<false>, grid, dim3(kBiasThreads), stream)(g, dy, chunk, workspace);
  }
  check_launch("bias_backward");
  sum_partials(workspace, splits, g.c_out, dbias, stream);
}

}  // namespace fastconv::FASTCONV_CUDA_NS
