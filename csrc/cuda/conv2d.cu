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
      : g(geometry),
        m(0),
        n(0),
        k(0),
        groups(geometry.groups),
        cin_g(static_cast<int>(geometry.cin_per_group())),
        cout_g(static_cast<int>(geometry.cout_per_group())),
        taps(static_cast<int>(geometry.kh * geometry.kw)) {}

  __device__ void split_filter(int64_t k_index, int channels, int& c, int& ky, int& kx) const {
    split_filter_index(static_cast<int>(k_index), channels, static_cast<int>(g.kw), taps, kNhwc, c,
                       ky, kx);
  }
  // Offset of weight (o, c, ky, kx), o counted over all groups.
  __device__ int64_t w_offset(int64_t o, int c, int ky, int kx) const {
    return (o * cin_g + c) * taps + ky * g.kw + kx;
  }
  // Offset of pixel (y, x) from pixel (0, 0) within one channel of an image `width` wide with
  // `channels` channels: linear, so it also holds for differences and padding positions.
  __device__ static int64_t pixel_delta(int64_t y, int64_t x, int64_t width, int64_t channels) {
    return kNhwc ? (y * width + x) * channels : y * width + x;
  }
};

// Row/column start of a GEMM row that lies past the end: every tap of it is out of bounds.
constexpr int kOutside = -(1 << 30);

template <bool kNhwc>
struct ForwardProblem : ConvProblem<kNhwc> {
  using ConvProblem<kNhwc>::g;
  static constexpr bool kAByM = !kNhwc, kBByN = false, kStoreByM = !kNhwc;
  struct RowA {    // output pixel (b, oy, ox)
    int64_t base;  // x offset of (b, the group's channel 0, iy0, ix0)
    int iy0, ix0;  // input row/column of tap (0, 0); kOutside past the last pixel
  };
  struct ColB {
    int64_t w_row;  // offset of the output channel's weights; -1 past the last channel
  };
  struct KEntry {     // filter index k = (c, ky, kx)
    int64_t x_delta;  // x offset of the tap from the row base
    int dy, dx;       // the tap's row/column from (iy0, ix0)
    int w_index;      // offset in the output channel's weights
  };
  const float *x, *w, *bias;
  float* y;

  ForwardProblem(const ConvGeometry& geometry, const float* x_, const float* w_, const float* bias_,
                 float* y_)
      : ConvProblem<kNhwc>(geometry), x(x_), w(w_), bias(bias_), y(y_) {
    this->m = g.n * g.oh * g.ow;
    this->n = this->cout_g;
    this->k = static_cast<int64_t>(this->cin_g) * this->taps;
  }
  __device__ RowA row_a(int64_t p, int group) const {
    if (p >= this->m) return {0, kOutside, kOutside};
    int64_t b, oy, ox;
    ConvGeometry::split_pixel(p, g.oh, g.ow, b, oy, ox);
    const int64_t iy0 = g.in_row(oy, 0), ix0 = g.in_col(ox, 0);
    return {g.x_offset(b, static_cast<int64_t>(group) * this->cin_g, iy0, ix0),
            static_cast<int>(iy0), static_cast<int>(ix0)};
  }
  __device__ KEntry k_entry(int64_t k, int) const {
    int c, ky, kx;
    this->split_filter(k, this->cin_g, c, ky, kx);
    const int dy = static_cast<int>(ky * g.dil_h), dx = static_cast<int>(kx * g.dil_w);
    const int64_t channel = kNhwc ? c : c * g.h * g.w;
    return {channel + this->pixel_delta(dy, dx, g.w, g.c_in), dy, dx,
            static_cast<int>((c * g.kh + ky) * g.kw + kx)};
  }
  __device__ float a(const RowA& r, const KEntry& e, int) const {
    const int iy = r.iy0 + e.dy, ix = r.ix0 + e.dx;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.f;
    return x[r.base + e.x_delta];
  }
  __device__ ColB col_b(int64_t o, int group) const {
    return {o < this->n ? (static_cast<int64_t>(group) * this->cout_g + o) * this->k : -1};
  }
  __device__ float b(const ColB& col, const KEntry& e, int) const {
    return col.w_row < 0 ? 0.f : w[col.w_row + e.w_index];
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
  struct RowA {    // input pixel (b, iy, ix)
    int64_t base;  // dy offset of (b, the group's output channel 0, 0, 0)
    int ny, nx;    // iy + pad_top, ix + pad_left: the output row of tap ky is (ny - dy)/stride
  };
  struct ColB {
    int64_t w_col;  // offset of weight (the group's output channel 0, c, 0, 0); -1 past the end
  };
  struct KEntry {        // filter index k = (o, ky, kx)
    int64_t dy_channel;  // dy offset of output channel o from channel 0
    int dy, dx;          // ky*dil_h, kx*dil_w
    int w_index;         // offset of weight (o, c, ky, kx) from (0, c, 0, 0)
  };
  const float *dy, *w;
  float* dx;

  BackwardInputProblem(const ConvGeometry& geometry, const float* dy_, const float* w_, float* dx_)
      : ConvProblem<kNhwc>(geometry), dy(dy_), w(w_), dx(dx_) {
    this->m = g.n * g.h * g.w;
    this->n = this->cin_g;
    this->k = static_cast<int64_t>(this->cout_g) * this->taps;
  }
  __device__ RowA row_a(int64_t p, int group) const {
    if (p >= this->m) return {0, kOutside, kOutside};
    int64_t b, iy, ix;
    ConvGeometry::split_pixel(p, g.h, g.w, b, iy, ix);
    return {g.y_offset(b, static_cast<int64_t>(group) * this->cout_g, 0, 0),
            static_cast<int>(iy + g.pad_top), static_cast<int>(ix + g.pad_left)};
  }
  __device__ KEntry k_entry(int64_t k, int) const {
    int o, ky, kx;
    this->split_filter(k, this->cout_g, o, ky, kx);
    return {kNhwc ? o : o * g.oh * g.ow, static_cast<int>(ky * g.dil_h),
            static_cast<int>(kx * g.dil_w),
            (o * this->cin_g) * this->taps + ky * static_cast<int>(g.kw) + kx};
  }
  // Output index of a tap: (scaled / stride) if it divides and lands inside, else -1.
  __device__ static int output_index(int scaled, int64_t stride, int64_t out) {
    if (scaled < 0) return -1;
    const int o = stride == 1 ? scaled : scaled / static_cast<int>(stride);
    return o * stride == scaled && o < out ? o : -1;
  }
  __device__ float a(const RowA& r, const KEntry& e, int) const {
    const int oy = output_index(r.ny - e.dy, g.stride_h, g.oh);
    const int ox = output_index(r.nx - e.dx, g.stride_w, g.ow);
    if (oy < 0 || ox < 0) return 0.f;
    return dy[r.base + e.dy_channel + this->pixel_delta(oy, ox, g.ow, g.c_out)];
  }
  __device__ ColB col_b(int64_t c, int group) const {
    if (c >= this->n) return {-1};
    return {(static_cast<int64_t>(group) * this->cout_g * this->cin_g + c) * this->taps};
  }
  __device__ float b(const ColB& col, const KEntry& e, int) const {
    return col.w_col < 0 ? 0.f : w[col.w_col + e.w_index];
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
    int64_t channel;  // dy offset of output channel o from channel 0; -1 past the end
  };
  struct ColB {       // filter index n = (c, ky, kx)
    int64_t channel;  // x offset of input channel c (of all groups) from channel 0
    int dy, dx;       // ky*dil_h, kx*dil_w; kOutside past the end
  };
  struct KEntry {      // output pixel p = (b, oy, ox)
    int64_t dy_pixel;  // dy offset of (b, 0, oy, ox)
    int64_t x_image;   // x offset of (b, 0, 0, 0)
    int iy0, ix0;      // input row/column of tap (0, 0)
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
    if (o >= this->m) return {-1};
    const int64_t oc = static_cast<int64_t>(group) * this->cout_g + o;
    return {kNhwc ? oc : oc * g.oh * g.ow};
  }
  __device__ ColB col_b(int64_t n_index, int group) const {
    if (n_index >= this->n) return {0, kOutside, kOutside};
    int c, ky, kx;
    this->split_filter(n_index, this->cin_g, c, ky, kx);
    const int64_t ic = static_cast<int64_t>(group) * this->cin_g + c;
    return {kNhwc ? ic : ic * g.h * g.w, static_cast<int>(ky * g.dil_h),
            static_cast<int>(kx * g.dil_w)};
  }
  __device__ KEntry k_entry(int64_t p, int) const {
    int64_t b, oy, ox;
    ConvGeometry::split_pixel(p, g.oh, g.ow, b, oy, ox);
    return {g.y_offset(b, 0, oy, ox), g.x_offset(b, 0, 0, 0), static_cast<int>(g.in_row(oy, 0)),
            static_cast<int>(g.in_col(ox, 0))};
  }
  __device__ float a(const RowA& r, const KEntry& e, int) const {
    return r.channel < 0 ? 0.f : dy[e.dy_pixel + r.channel];
  }
  __device__ float b(const ColB& col, const KEntry& e, int) const {
    const int iy = e.iy0 + col.dy, ix = e.ix0 + col.dx;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.f;
    return x[e.x_image + col.channel + this->pixel_delta(iy, ix, g.w, g.c_in)];
  }
  __device__ void store(int64_t o, int64_t n_index, int group, int64_t split, float v) const {
    int c, ky, kx;
    this->split_filter(n_index, this->cin_g, c, ky, kx);
    const int64_t oc = static_cast<int64_t>(group) * this->cout_g + o;
    partial[split * g.w_size() + this->w_offset(oc, c, ky, kx)] = v;
  }
};

void require_small_filter(const ConvGeometry& g, const char* what) {
  // Filter and weight indices are 32-bit (split_filter_index, the GEMM k entries); weights of
  // 2^31 floats (8 GiB) are never practical.
  if (g.w_size() >= (int64_t{1} << 31) || g.c_in * g.kh * g.kw >= (int64_t{1} << 31) ||
      g.c_out * g.kh * g.kw >= (int64_t{1} << 31))
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

// flag[0] = 1 if any of the n values is infinite or NaN (left 0 otherwise; the caller
// zeroes it first). Every writer writes the same value.
__global__ void nonfinite_kernel(const float* v, int64_t n, int* flag) {
  for (int64_t i = first_element(); i < n; i += element_step())
    if (v[i] - v[i] != 0.f) *flag = 1;
}

__global__ void zero_flag_kernel(int* flag) { *flag = 0; }

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

void sum_partials(const float* partial, int64_t splits, int64_t count, float* out, Stream stream) {
  FC_LAUNCH(sum_partials_kernel, element_grid(count), dim3(kElementThreads), stream)
  (partial, splits, count, out);
  check_launch("sum_partials");
}

void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                    float* y, Launch& launch) {
  const Stream stream = launch.stream;
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
                           Launch& launch) {
  const Stream stream = launch.stream;
  if (is_depthwise(g)) return direct_conv2d_backward_input(g, dy, w, dx, nullptr, stream);
  require_small_filter(g, "conv2d_backward_input");
  if (g.channels_last) {
    const BackwardInputProblem<true> p(g, dy, w, dx);
    run_implicit_gemm(p, p.k, stream, "conv2d_backward_input");
  } else {
    const BackwardInputProblem<false> p(g, dy, w, dx);
    run_implicit_gemm(p, p.k, stream, "conv2d_backward_input");
  }
  // The GEMM multiplies the zeros it gathers outside dy by every weight: with an infinite or
  // NaN weight those products put NaN where dx's sum has no such term. Then the direct sum
  // overwrites dx. Queued every time, so that no call waits for the check; the direct kernel
  // exits at once when every weight is finite.
  int* nonfinite = reinterpret_cast<int*>(launch.workspace(1));
  FC_LAUNCH(zero_flag_kernel, dim3(1), dim3(1), stream)(nonfinite);
  FC_LAUNCH(nonfinite_kernel, element_grid(g.w_size()), dim3(kElementThreads), stream)
  (w, g.w_size(), nonfinite);
  check_launch("conv2d_backward_input");
  direct_conv2d_backward_input(g, dy, w, dx, nonfinite, stream);
}

void conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                            Launch& launch) {
  const Stream stream = launch.stream;
  if (is_depthwise(g)) {
    float* workspace = launch.workspace(depthwise_conv2d_backward_weight_workspace(g));
    return depthwise_conv2d_backward_weight(g, dy, x, dw, workspace, stream);
  }
  require_small_filter(g, "conv2d_backward_weight");
  const int64_t splits = weight_splits(g), chunk = weight_chunk(g);
  float* workspace = splits > 1 ? launch.workspace(splits * g.w_size()) : nullptr;
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

void bias_backward(const ConvGeometry& g, const float* dy, float* dbias, Launch& launch) {
  const Stream stream = launch.stream;
  const int64_t splits = bias_splits(g), chunk = bias_chunk(g);
  float* workspace = launch.workspace(splits * g.c_out);
  if (g.channels_last) {
    const dim3 grid(static_cast<unsigned>(ceil_div(g.c_out, kBiasLanes)),
                    static_cast<unsigned>(splits));
    FC_LAUNCH(bias_partials_kernel<true>, grid, dim3(kBiasThreads), stream)
    (g, dy, chunk, workspace);
  } else {
    const dim3 grid(static_cast<unsigned>(g.c_out), static_cast<unsigned>(splits));
    FC_LAUNCH(bias_partials_kernel<false>, grid, dim3(kBiasThreads), stream)
    (g, dy, chunk, workspace);
  }
  check_launch("bias_backward");
  sum_partials(workspace, splits, g.c_out, dbias, stream);
}

void conv2d_backward(const ConvGeometry& g, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* dbias, Launch& launch) {
  if (dx) conv2d_backward_input(g, dy, w, dx, launch);
  conv2d_backward_weight(g, dy, x, dw, launch);
  if (dbias) bias_backward(g, dy, dbias, launch);
}

}  // namespace fastconv::FASTCONV_CUDA_NS
