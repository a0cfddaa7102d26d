// Depthwise 2-D convolution on the GPU: one KH x KW filter per (input channel, multiplier).
//
// C input channels, M = C_out / C; output channel o reads input channel o / M. There is no
// reduction over channels, so the work is memory-bound: one thread per output (or per dx
// cell for backward-input, which gathers the outputs that read it), threads ordered like
// the memory of what they write so that neighbours read neighbouring inputs and the
// re-reads of overlapping windows hit the cache. Backward-weight reduces over all pixels:
// per-split partial sums in shared memory, then sum_partials in a fixed order.
#include "cuda/common.cuh"

namespace fastconv::FASTCONV_CUDA_NS {
namespace {

template <bool kNhwc>
__global__ void depthwise_forward_kernel(const ConvGeometry g, const float* x, const float* w,
                                         const float* bias, float* y) {
  const int64_t mult = g.c_out / g.c_in, taps = g.kh * g.kw, total = g.y_size();
  for (int64_t i = first_element(); i < total; i += element_step()) {
    int64_t b, o, oy, ox;
    ConvGeometry::split_offset(kNhwc, g.c_out, g.oh, g.ow, i, b, o, oy, ox);
    float acc = bias ? bias[o] : 0.f;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = g.in_row(oy, ky);
      if (iy < 0 || iy >= g.h) continue;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t ix = g.in_col(ox, kx);
        if (ix < 0 || ix >= g.w) continue;
        acc = fmaf(x[g.x_offset(b, o / mult, iy, ix)], w[o * taps + ky * g.kw + kx], acc);
      }
    }
    y[i] = acc;
  }
}

// dx cell (b, c, iy, ix) as the sum over the output cells that read it, one thread per
// cell: depthwise backward-input, and any convolution's where a device flag asks for it
// (run_if: skipped when it holds 0).
template <bool kNhwc>
__global__ void direct_backward_input_kernel(const ConvGeometry g, const float* dy, const float* w,
                                             float* dx, const int* run_if) {
  if (run_if && !*run_if) return;
  const int64_t cin_g = g.cin_per_group(), cout_g = g.cout_per_group(), taps = g.kh * g.kw;
  const int64_t total = g.x_size();
  for (int64_t i = first_element(); i < total; i += element_step()) {
    int64_t b, c, iy, ix;
    ConvGeometry::split_offset(kNhwc, g.c_in, g.h, g.w, i, b, c, iy, ix);
    const int64_t group = c / cin_g, ci = c - group * cin_g;
    float acc = 0.f;
    for (int64_t o = group * cout_g; o < (group + 1) * cout_g; ++o)
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t oy = g.out_row(iy, ky);
        if (oy < 0) continue;
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t ox = g.out_col(ix, kx);
          if (ox >= 0)
            acc = fmaf(dy[g.y_offset(b, o, oy, ox)], w[(o * cin_g + ci) * taps + ky * g.kw + kx],
                       acc);
        }
      }
    dx[i] = acc;
  }
}

constexpr int kWeightThreads = 256, kWeightLanes = 32, kWeightPixels = 2048;

// Partial dw of split blockIdx.y. NCHW: a block per output channel, threads along pixels.
// NHWC: a block per 32 output channels, 8 rows of threads over the pixels.
template <bool kNhwc>
__global__ void __launch_bounds__(kWeightThreads)
    depthwise_weight_partials_kernel(const ConvGeometry g, const float* dy, const float* x,
                                     int64_t chunk, float* partial) {
  __shared__ float scratch[kWeightThreads];
  constexpr int kRows = kWeightThreads / kWeightLanes;
  const int64_t mult = g.c_out / g.c_in, taps = g.kh * g.kw;
  int64_t begin, end;
  split_range(blockIdx.y, chunk, g.n * g.oh * g.ow, begin, end);
  const int t = static_cast<int>(threadIdx.x);
  const int64_t o = kNhwc ? static_cast<int64_t>(blockIdx.x) * kWeightLanes + t % kWeightLanes
                          : static_cast<int64_t>(blockIdx.x);
  const int64_t first = kNhwc ? begin + t / kWeightLanes : begin + t;
  const int64_t step = kNhwc ? kRows : kWeightThreads;
  float* out = partial + blockIdx.y * g.w_size() + o * taps;
  for (int64_t tap = 0; tap < taps; ++tap) {
    const int64_t ky = tap / g.kw, kx = tap % g.kw;
    float sum = 0.f;
    if (o < g.c_out)
      for (int64_t p = first; p < end; p += step) {
        int64_t b, oy, ox;
        ConvGeometry::split_pixel(p, g.oh, g.ow, b, oy, ox);
        const int64_t iy = g.in_row(oy, ky), ix = g.in_col(ox, kx);
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
          sum = fmaf(dy[g.y_offset(b, o, oy, ox)], x[g.x_offset(b, o / mult, iy, ix)], sum);
      }
    if (kNhwc) {
      scratch[t] = sum;
      __syncthreads();
      if (t < kWeightLanes && o < g.c_out) {
        float total = 0.f;
        for (int r = 0; r < kRows; ++r) total += scratch[r * kWeightLanes + t];
        out[tap] = total;
      }
      __syncthreads();  // scratch is rewritten for the next tap
    } else {
      const float total = block_sum(sum, scratch);
      if (t == 0) out[tap] = total;
    }
  }
}

int64_t weight_chunk(const ConvGeometry& g) {
  return pixel_chunk(g.n * g.oh * g.ow, kWeightPixels);
}
int64_t weight_splits(const ConvGeometry& g) {
  return ceil_div(g.n * g.oh * g.ow, weight_chunk(g));
}

}  // namespace

bool is_depthwise(const ConvGeometry& g) { return g.groups > 1 && g.groups == g.c_in; }

void depthwise_conv2d_forward(const ConvGeometry& g, const float* x, const float* w,
                              const float* bias, float* y, Stream stream) {
  const dim3 grid = element_grid(g.y_size()), block(kElementThreads);
  if (g.channels_last)
    FC_LAUNCH(depthwise_forward_kernel<true>, grid, block, stream)(g, x, w, bias, y);
  else
    FC_LAUNCH(depthwise_forward_kernel<false>, grid, block, stream)(g, x, w, bias, y);
  check_launch("depthwise_conv2d_forward");
}

void direct_conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                                  const int* run_if, Stream stream) {
  const dim3 grid = element_grid(g.x_size()), block(kElementThreads);
  if (g.channels_last)
    FC_LAUNCH(direct_backward_input_kernel<true>, grid, block, stream)(g, dy, w, dx, run_if);
  else
    FC_LAUNCH(direct_backward_input_kernel<false>, grid, block, stream)(g, dy, w, dx, run_if);
  check_launch("direct_conv2d_backward_input");
}

int64_t depthwise_conv2d_backward_weight_workspace(const ConvGeometry& g) {
  return weight_splits(g) * g.w_size();
}

void depthwise_conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                      float* dw, float* workspace, Stream stream) {
  const int64_t splits = weight_splits(g), chunk = weight_chunk(g);
  const dim3 block(kWeightThreads);
  if (g.channels_last) {
    const dim3 grid(static_cast<unsigned>(ceil_div(g.c_out, kWeightLanes)),
                    static_cast<unsigned>(splits));
    FC_LAUNCH(depthwise_weight_partials_kernel<true>, grid, block, stream)
    (g, dy, x, chunk, workspace);
  } else {
    const dim3 grid(static_cast<unsigned>(g.c_out), static_cast<unsigned>(splits));
    FC_LAUNCH(depthwise_weight_partials_kernel<false>, grid, block, stream)
    (g, dy, x, chunk, workspace);
  }
  check_launch("depthwise_conv2d_backward_weight");
  sum_partials(workspace, splits, g.w_size(), dw, stream);
}

}  // namespace fastconv::FASTCONV_CUDA_NS
