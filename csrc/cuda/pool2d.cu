// Max / min / average / sum pooling on the GPU, forward and backward, with the CPU kernels'
// exact semantics (PoolGeometry::window clips windows to the real input; the first extreme in
// row-major order wins, NaN counting as extreme; averages divide by the real cells unless
// count_include_pad). Global average pooling is avg pooling with a whole-image window.
//
// Forward: one thread per output, or for wide windows (global pooling) several threads per
// output whose partials are merged in a fixed order. Backward gathers: one thread per dx cell
// loops over the outputs whose windows cover it, in the (oy, ox) order the CPU scatters
// them, so no atomics are needed. Max/min backward reads every window's winner (its cell,
// row-major among the window's real cells): saved by the forward as one byte per output
// (pool2d_forward_winners), or recomputed from x into an int workspace by the forward
// kernels, so the gather reads one number per covering window instead of rescanning it.
// Threads are ordered like memory (channels fastest for NHWC), so neighbours read neighbours.
#include "cuda/common.cuh"

namespace fastconv::FASTCONV_CUDA_NS {
namespace {

// Cell (row-major within the clipped window) of the first extreme of a window of plane (b, c).
template <PoolKind kind>
__device__ int winning_cell(const PoolGeometry& g, const float* x, int64_t b, int64_t c, int64_t y0,
                            int64_t y1, int64_t x0, int64_t x1) {
  int best = 0, cell = 0;
  float best_value = x[g.offset(b, c, y0, x0, g.h, g.w)];
  for (int64_t iy = y0; iy < y1; ++iy)
    for (int64_t ix = x0; ix < x1; ++ix, ++cell) {
      const float v = x[g.offset(b, c, iy, ix, g.h, g.w)];
      if (PoolGeometry::replaces(kind, v, best_value)) {
        best = cell;
        best_value = v;
      }
    }
  return best;
}

// y = the pooled values (unless nullptr), and for max/min unless nullptr: winners = each
// window's winning cell.
template <PoolKind kind, class Cell>
__global__ void pool_forward_kernel(const PoolGeometry g, const float* x, float* y, Cell* winners) {
  const int64_t total = g.y_size();
  for (int64_t i = first_element(); i < total; i += element_step()) {
    int64_t b, c, oy, ox, y0, y1, x0, x1;
    ConvGeometry::split_offset(g.channels_last != 0, g.c, g.oh, g.ow, i, b, c, oy, ox);
    g.window(oy, ox, y0, y1, x0, x1);
    if (is_extreme(kind)) {
      const int cell = winning_cell<kind>(g, x, b, c, y0, y1, x0, x1);
      if (y) y[i] = x[g.offset(b, c, y0 + cell / (x1 - x0), x0 + cell % (x1 - x0), g.h, g.w)];
      if (winners) winners[i] = static_cast<Cell>(cell);
      continue;
    }
    float acc = 0.f;
    for (int64_t iy = y0; iy < y1; ++iy)
      for (int64_t ix = x0; ix < x1; ++ix) acc += x[g.offset(b, c, iy, ix, g.h, g.w)];
    y[i] = kind == PoolKind::kAvg ? acc / g.avg_divisor((y1 - y0) * (x1 - x0)) : acc;
  }
}

// Wide windows (global pooling): one thread per output would leave most of the GPU idle and
// read long serial chains, so several threads share an output, each scanning every parts-th
// cell of the window in row-major order, and a leader merges their partials in part order.
// NCHW: a row of 32 threads per output. NHWC: a block column per 32 neighbouring channels,
// its 8 rows splitting the cells. Extremes merge by (value, cell): the first extreme wins.
constexpr int kWideCells = 64, kWideLanes = 32, kWideRows = 8;

template <PoolKind kind>
__device__ __forceinline__ void keep_extreme(float v, int cell, float& best, int& best_cell) {
  const bool tie = v == best || (v != v && best != best);
  if (cell >= 0 &&
      (best_cell < 0 || PoolGeometry::replaces(kind, v, best) || (tie && cell < best_cell))) {
    best = v;
    best_cell = cell;
  }
}

template <PoolKind kind, bool kNhwc, class Cell>
__global__ void __launch_bounds__(kWideLanes* kWideRows)
    pool_forward_wide_kernel(const PoolGeometry g, const float* x, float* y, Cell* winners) {
  __shared__ float values[kWideRows][kWideLanes];
  __shared__ int cells[kWideRows][kWideLanes];
  const int lane = static_cast<int>(threadIdx.x), row = static_cast<int>(threadIdx.y);
  int64_t out, b, c, oy, ox;
  bool valid;
  if (kNhwc) {
    c = static_cast<int64_t>(blockIdx.y) * kWideLanes + lane;
    ConvGeometry::split_pixel(blockIdx.x, g.oh, g.ow, b, oy, ox);
    out = static_cast<int64_t>(blockIdx.x) * g.c + c;
    valid = c < g.c;
  } else {
    out = static_cast<int64_t>(blockIdx.x) * kWideRows + row;
    valid = out < g.y_size();
    ConvGeometry::split_offset(false, g.c, g.oh, g.ow, valid ? out : 0, b, c, oy, ox);
  }
  const int part = kNhwc ? row : lane, parts = kNhwc ? kWideRows : kWideLanes;
  int64_t y0, y1, x0, x1;
  g.window(oy, ox, y0, y1, x0, x1);
  const int width = static_cast<int>(x1 - x0),
            count = valid ? static_cast<int>((y1 - y0) * width) : 0;
  float acc = 0.f;
  int acc_cell = -1;
  for (int t = part; t < count; t += parts) {
    const float v = x[g.offset(b, c, y0 + t / width, x0 + t % width, g.h, g.w)];
    if (is_extreme(kind))
      keep_extreme<kind>(v, t, acc, acc_cell);
    else
      acc += v;
  }
  values[row][lane] = acc;
  cells[row][lane] = acc_cell;
  __syncthreads();
  if (!valid || part != 0) return;
  float total = 0.f;
  int total_cell = -1;
  for (int p = 0; p < parts; ++p) {
    const float v = kNhwc ? values[p][lane] : values[row][p];
    if (is_extreme(kind))
      keep_extreme<kind>(v, kNhwc ? cells[p][lane] : cells[row][p], total, total_cell);
    else
      total += v;
  }
  if (is_extreme(kind) && winners) winners[out] = static_cast<Cell>(total_cell);
  if (y) y[out] = kind == PoolKind::kAvg ? total / g.avg_divisor(count) : total;
}

// winners: each window's winning cell (max/min only).
template <PoolKind kind, class Cell>
__global__ void pool_backward_kernel(const PoolGeometry g, const float* dy, const Cell* winners,
                                     float* dx) {
  const int64_t total = g.x_size();
  for (int64_t i = first_element(); i < total; i += element_step()) {
    int64_t b, c, iy, ix, oy_lo, oy_hi, ox_lo, ox_hi;
    ConvGeometry::split_offset(g.channels_last != 0, g.c, g.h, g.w, i, b, c, iy, ix);
    PoolGeometry::covering_outputs(iy, g.kh, g.stride_h, g.pad_top, g.oh, oy_lo, oy_hi);
    PoolGeometry::covering_outputs(ix, g.kw, g.stride_w, g.pad_left, g.ow, ox_lo, ox_hi);
    float acc = 0.f;
    for (int64_t oy = oy_lo; oy < oy_hi; ++oy)
      for (int64_t ox = ox_lo; ox < ox_hi; ++ox) {
        const int64_t out = g.offset(b, c, oy, ox, g.oh, g.ow);
        int64_t y0, y1, x0, x1;
        g.window(oy, ox, y0, y1, x0, x1);
        if (is_extreme(kind)) {
          if (static_cast<int64_t>(winners[out]) == (iy - y0) * (x1 - x0) + (ix - x0))
            acc += dy[out];
        } else {
          acc += kind == PoolKind::kAvg ? dy[out] / g.avg_divisor((y1 - y0) * (x1 - x0)) : dy[out];
        }
      }
    dx[i] = acc;
  }
}

// The forward pass: y and the winners of max/min windows, each unless nullptr.
template <PoolKind kind, class Cell>
void forward(const PoolGeometry& g, const float* x, float* y, Cell* winners, Stream stream) {
  const dim3 wide_block(kWideLanes, kWideRows);
  if (g.kh * g.kw < kWideCells) {
    auto* kernel = &pool_forward_kernel<kind, Cell>;
    FC_LAUNCH(kernel, element_grid(g.y_size()), dim3(kElementThreads), stream)(g, x, y, winners);
  } else if (g.channels_last) {
    const dim3 grid(static_cast<unsigned>(g.n * g.oh * g.ow),
                    static_cast<unsigned>(ceil_div(g.c, kWideLanes)));
    auto* kernel = &pool_forward_wide_kernel<kind, true, Cell>;
    FC_LAUNCH(kernel, grid, wide_block, stream)(g, x, y, winners);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(g.y_size(), kWideRows)));
    auto* kernel = &pool_forward_wide_kernel<kind, false, Cell>;
    FC_LAUNCH(kernel, grid, wide_block, stream)(g, x, y, winners);
  }
  check_launch("pool2d_forward");
}

template <PoolKind kind, class Cell>
void backward(const PoolGeometry& g, const float* dy, const Cell* winners, float* dx,
              Stream stream) {
  auto* kernel = &pool_backward_kernel<kind, Cell>;
  FC_LAUNCH(kernel, element_grid(g.x_size()), dim3(kElementThreads), stream)(g, dy, winners, dx);
  check_launch("pool2d_backward");
}

}  // namespace

void pool2d_forward(const PoolGeometry& g, const float* x, float* y, Launch& launch) {
  with_pool_kind(g.pool_kind(),
                 [&](auto kind) { forward<kind.value, int>(g, x, y, nullptr, launch.stream); });
}

void pool2d_backward(const PoolGeometry& g, const float* dy, const float* x, float* dx,
                     Launch& launch) {
  static_assert(sizeof(int) == sizeof(float), "winners live in a float workspace");
  const bool extreme = is_extreme(g.pool_kind());
  int* winners = extreme ? reinterpret_cast<int*>(launch.workspace(g.y_size())) : nullptr;
  with_pool_kind(g.pool_kind(), [&](auto kind) {
    if (extreme) forward<kind.value, int>(g, x, nullptr, winners, launch.stream);
    backward<kind.value, int>(g, dy, winners, dx, launch.stream);
  });
}

void pool2d_forward_winners(const PoolGeometry& g, const float* x, float* y, uint8_t* winners,
                            Launch& launch) {
  with_pool_kind(g.pool_kind(),
                 [&](auto kind) { forward<kind.value, uint8_t>(g, x, y, winners, launch.stream); });
}

void pool2d_backward_winners(const PoolGeometry& g, const float* dy, const uint8_t* winners,
                             float* dx, Launch& launch) {
  with_pool_kind(g.pool_kind(), [&](auto kind) {
    backward<kind.value, uint8_t>(g, dy, winners, dx, launch.stream);
  });
}

}  // namespace fastconv::FASTCONV_CUDA_NS
