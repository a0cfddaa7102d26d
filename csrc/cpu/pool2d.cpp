// Max / min / average / sum pooling on the CPU, forward and backward, one pass each.
//
// Windows are clipped to the real input (see PoolGeometry::window), so padding never wins a
// max or a min and averages divide by the real cells (or KH*KW with count_include_pad).
// Max/min backward recomputes the winner -- the first extreme in row-major order, NaN
// counting as extreme -- instead of storing indices, so the API needs only x and dy.
// NCHW works plane by plane; NHWC works on a block of channels of a pixel at a time, the
// channels being contiguous.
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int64_t kChannelBlock = 64;  // NHWC: channels per work item / accumulator block

template <PoolKind kind>
inline bool wins(float v, float best) { return PoolGeometry::replaces(kind, v, best); }

template <PoolKind kind>
constexpr bool is_extreme() { return kind == PoolKind::kMax || kind == PoolKind::kMin; }

// The starting value of a window: every window holds a real cell, which beats it or ties.
template <PoolKind kind>
constexpr float identity() {
  return kind == PoolKind::kMax   ? -std::numeric_limits<float>::infinity()
         : kind == PoolKind::kMin ? std::numeric_limits<float>::infinity()
                                  : 0.f;
}

// NCHW works a whole output row at a time: for each window row iy and column offset kx,
// the outputs [lo, hi) whose window holds (iy, ox*stride + kx - pad) form a strided run, so
// the inner loops carry no bounds checks and vectorise for stride 1. Everything about
// columns is the same for every row and plane, so it is worked out once per call.
struct ColumnPlan {
  std::vector<int64_t> lo, hi;       // per kx: the run of outputs whose column kx is real
  std::vector<int64_t> first, cells;  // per ox: first real input column, real columns
  explicit ColumnPlan(const PoolGeometry& g) : lo(g.kw), hi(g.kw), first(g.ow), cells(g.ow) {
    for (int64_t kx = 0; kx < g.kw; ++kx)
      valid_outputs(g.ow, g.w, g.stride_w, kx - g.pad_left, lo[kx], hi[kx]);
    int64_t y0, y1, x0, x1;
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      g.window(0, ox, y0, y1, x0, x1);
      first[ox] = x0;
      cells[ox] = x1 - x0;
    }
  }
};

template <class Visit>
inline void for_window_runs(const PoolGeometry& g, const ColumnPlan& plan, int64_t oy,
                            Visit&& visit) {
  int64_t y0, y1, x0, x1;
  g.window(oy, 0, y0, y1, x0, x1);
  for (int64_t iy = y0; iy < y1; ++iy)
    for (int64_t kx = 0; kx < g.kw; ++kx)
      if (plan.lo[kx] < plan.hi[kx]) visit(iy, kx - g.pad_left, plan.lo[kx], plan.hi[kx]);
}

int64_t window_rows(const PoolGeometry& g, int64_t oy) {
  int64_t y0, y1, x0, x1;
  g.window(oy, 0, y0, y1, x0, x1);
  return y1 - y0;
}

template <PoolKind kind>
void forward_plane(const PoolGeometry& g, const ColumnPlan& plan, const float* in, float* out) {
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    float* o = out + oy * g.ow;
    std::fill(o, o + g.ow, identity<kind>());
    for_window_runs(g, plan, oy, [&](int64_t iy, int64_t shift, int64_t lo, int64_t hi) {
      const float* src = in + iy * g.w + shift;
      for (int64_t ox = lo; ox < hi; ++ox) {
        const float v = src[ox * g.stride_w];
        if constexpr (is_extreme<kind>()) o[ox] = wins<kind>(v, o[ox]) ? v : o[ox];
        else o[ox] += v;
      }
    });
    if (kind == PoolKind::kAvg) {
      const int64_t rows = window_rows(g, oy);
      for (int64_t ox = 0; ox < g.ow; ++ox) o[ox] /= g.avg_divisor(rows * plan.cells[ox]);
    }
  }
}

template <PoolKind kind>
void backward_plane(const PoolGeometry& g, const ColumnPlan& plan, const float* grad,
                    const float* in, float* out) {
  std::fill(out, out + g.h * g.w, 0.f);
  std::vector<float> best(g.ow);
  std::vector<int64_t> where(g.ow);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const float* d = grad + oy * g.ow;
    if constexpr (is_extreme<kind>()) {
      int64_t y0, y1, x0, x1;
      g.window(oy, 0, y0, y1, x0, x1);
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        best[ox] = identity<kind>();
        where[ox] = y0 * g.w + plan.first[ox];  // kept if every cell equals the identity
      }
      // Runs visit each window's cells in row-major order, so the first extreme stays.
      // Locals and restrict pointers: stores to best/where cannot alias g, so nothing is
      // reloaded inside the loop and the selects compile without branches.
      const int64_t sw = g.stride_w, width = g.w;
      float* __restrict best_value = best.data();
      int64_t* __restrict best_at = where.data();
      for_window_runs(g, plan, oy, [&](int64_t iy, int64_t shift, int64_t lo, int64_t hi) {
        const float* __restrict src = in + iy * width + shift;
        const int64_t base = iy * width + shift;
        for (int64_t ox = lo; ox < hi; ++ox) {
          const float v = src[ox * sw], b = best_value[ox];
          const bool take = wins<kind>(v, b);
          best_value[ox] = take ? v : b;
          best_at[ox] = take ? base + ox * sw : best_at[ox];
        }
      });
      for (int64_t ox = 0; ox < g.ow; ++ox) out[where[ox]] += d[ox];
    } else {
      const int64_t rows = window_rows(g, oy);
      for (int64_t ox = 0; ox < g.ow; ++ox)
        best[ox] = kind == PoolKind::kAvg ? d[ox] / g.avg_divisor(rows * plan.cells[ox]) : d[ox];
      for_window_runs(g, plan, oy, [&](int64_t iy, int64_t shift, int64_t lo, int64_t hi) {
        float* dst = out + iy * g.w + shift;
        for (int64_t ox = lo; ox < hi; ++ox) dst[ox * g.stride_w] += best[ox];
      });
    }
  }
}

// Forward of output row oy of NHWC image b, all channels.
template <PoolKind kind>
void forward_nhwc_row(const PoolGeometry& g, const float* x, float* y, int64_t b, int64_t oy) {
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    int64_t y0, y1, x0, x1;
    g.window(oy, ox, y0, y1, x0, x1);
    float* out = y + ((b * g.oh + oy) * g.ow + ox) * g.c;
    std::memcpy(out, x + ((b * g.h + y0) * g.w + x0) * g.c, sizeof(float) * g.c);
    if (!is_extreme<kind>()) std::fill(out, out + g.c, 0.f);
    for (int64_t iy = y0; iy < y1; ++iy)
      for (int64_t ix = x0; ix < x1; ++ix) {
        const float* in = x + ((b * g.h + iy) * g.w + ix) * g.c;
        for (int64_t c = 0; c < g.c; ++c) {
          if constexpr (is_extreme<kind>()) out[c] = wins<kind>(in[c], out[c]) ? in[c] : out[c];
          else out[c] += in[c];
        }
      }
    if (kind == PoolKind::kAvg) {
      const float inv = 1.f / g.avg_divisor((y1 - y0) * (x1 - x0));
      for (int64_t c = 0; c < g.c; ++c) out[c] *= inv;
    }
  }
}

// Backward of channels [c0, c0+cn) of NHWC image b (the item owns those dx cells).
template <PoolKind kind>
void backward_nhwc_block(const PoolGeometry& g, const float* dy, const float* x, float* dx,
                         int64_t b, int64_t c0, int64_t cn) {
  for (int64_t p = 0; p < g.h * g.w; ++p) std::fill_n(dx + (b * g.h * g.w + p) * g.c + c0, cn, 0.f);
  int64_t best[kChannelBlock];
  float best_value[kChannelBlock];
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      int64_t y0, y1, x0, x1;
      g.window(oy, ox, y0, y1, x0, x1);
      const float* d = dy + ((b * g.oh + oy) * g.ow + ox) * g.c + c0;
      if constexpr (is_extreme<kind>()) {
        const int64_t first = ((b * g.h + y0) * g.w + x0) * g.c + c0;
        for (int64_t c = 0; c < cn; ++c) {
          best[c] = first + c;
          best_value[c] = identity<kind>();
        }
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) {
            const int64_t at = ((b * g.h + iy) * g.w + ix) * g.c + c0;
            for (int64_t c = 0; c < cn; ++c) {  // branch-free selects, as in backward_plane
              const float v = x[at + c], b = best_value[c];
              const bool take = wins<kind>(v, b);
              best_value[c] = take ? v : b;
              best[c] = take ? at + c : best[c];
            }
          }
        for (int64_t c = 0; c < cn; ++c) dx[best[c]] += d[c];
      } else {
        const float scale = kind == PoolKind::kAvg ? 1.f / g.avg_divisor((y1 - y0) * (x1 - x0)) : 1.f;
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) {
            float* out = dx + ((b * g.h + iy) * g.w + ix) * g.c + c0;
            for (int64_t c = 0; c < cn; ++c) out[c] += kind == PoolKind::kAvg ? d[c] * scale : d[c];
          }
      }
    }
}

template <PoolKind kind>
void forward(const PoolGeometry& g, const float* x, float* y) {
  if (g.channels_last) {
    parallel_for(g.n * g.oh, [&](int64_t row) { forward_nhwc_row<kind>(g, x, y, row / g.oh, row % g.oh); });
  } else {
    const ColumnPlan plan(g);
    parallel_for(g.n * g.c, [&](int64_t plane) {
      forward_plane<kind>(g, plan, x + plane * g.h * g.w, y + plane * g.oh * g.ow);
    });
  }
}

template <PoolKind kind>
void backward(const PoolGeometry& g, const float* dy, const float* x, float* dx) {
  if (g.channels_last) {
    const int64_t blocks = (g.c + kChannelBlock - 1) / kChannelBlock;
    parallel_for(g.n * blocks, [&](int64_t item) {
      const int64_t c0 = item % blocks * kChannelBlock;
      backward_nhwc_block<kind>(g, dy, x, dx, item / blocks, c0, std::min(kChannelBlock, g.c - c0));
    });
  } else {
    const ColumnPlan plan(g);
    parallel_for(g.n * g.c, [&](int64_t plane) {
      backward_plane<kind>(g, plan, dy + plane * g.oh * g.ow, x + plane * g.h * g.w,
                           dx + plane * g.h * g.w);
    });
  }
}

}  // namespace

void pool2d_forward(const PoolGeometry& g, const float* x, float* y) {
  switch (g.pool_kind()) {
    case PoolKind::kMax: return forward<PoolKind::kMax>(g, x, y);
    case PoolKind::kMin: return forward<PoolKind::kMin>(g, x, y);
    case PoolKind::kAvg: return forward<PoolKind::kAvg>(g, x, y);
    case PoolKind::kSum: return forward<PoolKind::kSum>(g, x, y);
  }
}

void pool2d_backward(const PoolGeometry& g, const float* dy, const float* x, float* dx) {
  switch (g.pool_kind()) {
    case PoolKind::kMax: return backward<PoolKind::kMax>(g, dy, x, dx);
    case PoolKind::kMin: return backward<PoolKind::kMin>(g, dy, x, dx);
    case PoolKind::kAvg: return backward<PoolKind::kAvg>(g, dy, x, dx);
    case PoolKind::kSum: return backward<PoolKind::kSum>(g, dy, x, dx);
  }
}

}  // namespace fastconv::cpu::FASTCONV_ISA
