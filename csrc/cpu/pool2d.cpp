// Max / min / average / sum pooling on the CPU, forward and backward, one pass each.
//
// Windows are clipped to the real input (see PoolGeometry::window), so padding never wins a
// max or a min and averages divide by the real cells (or KH*KW with count_include_pad).
// The winner of a max/min window is the first extreme in row-major order, NaN counting as
// extreme. The backward either recomputes it from x, or reads it from `winners`, which the
// forward can save: one byte per output, the winner's position among the window's real cells
// in row-major order (so windows of at most 256 cells). A saved winner outside its window's
// cells gives no gradient: no kernel writes outside its window.
// NCHW works plane by plane; NHWC works on the contiguous channels of a pixel, a vector of
// them at a time, and writes large outputs with streaming stores where windows do not
// overlap (see `streams`).
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/lanes.h"
#include "cpu/parallel.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

template <PoolKind kind>
inline bool wins(float v, float best) {
  return PoolGeometry::replaces(kind, v, best);
}

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
  std::vector<int64_t> lo, hi;        // per kx: the run of outputs whose column kx is real
  std::vector<int64_t> first, cells;  // per ox: first real input column, real columns
  int64_t width;                      // of the input plane
  explicit ColumnPlan(const PoolGeometry& g)
      : lo(g.kw), hi(g.kw), first(g.ow), cells(g.ow), width(g.w) {
    for (int64_t kx = 0; kx < g.kw; ++kx)
      valid_outputs(g.ow, g.w, g.stride_w, kx - g.pad_left, lo[kx], hi[kx]);
    int64_t y0, y1, x0, x1;
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      g.window(0, ox, y0, y1, x0, x1);
      first[ox] = x0;
      cells[ox] = x1 - x0;
    }
  }
  // A winner of output column ox in a window from input row y0: its offset in the plane from
  // its cell in the window and back; `rows` is the window's real rows.
  int64_t cell_of(int64_t y0, int64_t ox, int64_t offset) const {
    return (offset / width - y0) * cells[ox] + offset % width - first[ox];
  }
  bool offset_of(int64_t y0, int64_t rows, int64_t ox, int64_t cell, int64_t& offset) const {
    if (cell >= rows * cells[ox]) return false;
    offset = (y0 + cell / cells[ox]) * width + first[ox] + cell % cells[ox];
    return true;
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

int64_t window_top(const PoolGeometry& g, int64_t oy) {
  int64_t y0, y1, x0, x1;
  g.window(oy, 0, y0, y1, x0, x1);
  return y0;
}

// Per output of a row: its winning value and offset in the plane, reused from row to row.
struct RowWinners {
  std::vector<float> best;
  std::vector<int64_t> where;
  explicit RowWinners(const PoolGeometry& g) : best(g.ow), where(g.ow) {}
};

// The winner of every window of output row oy of a max/min plane.
template <PoolKind kind>
void find_row_winners(const PoolGeometry& g, const ColumnPlan& plan, const float* in, int64_t oy,
                      RowWinners& row) {
  const int64_t y0 = window_top(g, oy);
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    row.best[ox] = identity<kind>();
    row.where[ox] = y0 * g.w + plan.first[ox];  // kept if every cell equals the identity
  }
  // Runs visit each window's cells in row-major order, so the first extreme stays.
  // Locals and restrict pointers: stores to best/where cannot alias g, so nothing is
  // reloaded inside the loop and the selects compile without branches.
  const int64_t sw = g.stride_w, width = g.w;
  float* __restrict best_value = row.best.data();
  int64_t* __restrict best_at = row.where.data();
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
}

// run(first, last) over runs of `count` units of `floats` input floats each: about 64K
// input floats per run, so that handing a run to a thread costs little beside its work, and
// at least four runs per thread.
template <class Run>
void for_runs(int64_t count, int64_t floats, Run&& run) {
  const int64_t per_item = std::clamp<int64_t>(
      std::min((int64_t{64} << 10) / std::max<int64_t>(1, floats), count / (4 * num_threads())), 1,
      count);
  parallel_runs(count, per_item, run);
}

// NCHW items are runs of whole planes (a 7x7 plane is 49 floats).
template <class Run>
void for_plane_runs(const PoolGeometry& g, Run&& run) {
  for_runs(g.n * g.c, g.h * g.w, run);
}

// NHWC items are runs of output rows (of one image or several): a thread then reads
// consecutive input rows, and short rows (7x7 maps) are not handed out one at a time.
template <class Run>
void for_row_runs(const PoolGeometry& g, Run&& run) {
  for_runs(g.n * g.oh, g.stride_h * g.w * g.c, run);
}

// winners: the plane's saved winners (max/min), or nullptr.
template <PoolKind kind>
void forward_plane(const PoolGeometry& g, const ColumnPlan& plan, const float* in, float* out,
                   uint8_t* winners, RowWinners& row) {
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    float* o = out + oy * g.ow;
    if (is_extreme(kind) && winners) {
      find_row_winners<kind>(g, plan, in, oy, row);
      const int64_t y0 = window_top(g, oy);
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        o[ox] = row.best[ox];
        winners[oy * g.ow + ox] = static_cast<uint8_t>(plan.cell_of(y0, ox, row.where[ox]));
      }
      continue;
    }
    std::fill(o, o + g.ow, identity<kind>());
    for_window_runs(g, plan, oy, [&](int64_t iy, int64_t shift, int64_t lo, int64_t hi) {
      const float* src = in + iy * g.w + shift;
      for (int64_t ox = lo; ox < hi; ++ox) {
        const float v = src[ox * g.stride_w];
        if constexpr (is_extreme(kind))
          o[ox] = wins<kind>(v, o[ox]) ? v : o[ox];
        else
          o[ox] += v;
      }
    });
    if (kind == PoolKind::kAvg) {
      const int64_t rows = window_rows(g, oy);
      for (int64_t ox = 0; ox < g.ow; ++ox) o[ox] /= g.avg_divisor(rows * plan.cells[ox]);
    }
  }
}

// Max/min winners come from the plane's saved `winners`, or without them from `in`.
template <PoolKind kind>
void backward_plane(const PoolGeometry& g, const ColumnPlan& plan, const float* grad,
                    const float* in, const uint8_t* winners, float* out, RowWinners& row) {
  std::fill(out, out + g.h * g.w, 0.f);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const float* d = grad + oy * g.ow;
    if constexpr (is_extreme(kind)) {
      if (winners) {
        const int64_t y0 = window_top(g, oy), rows = window_rows(g, oy);
        for (int64_t ox = 0, at; ox < g.ow; ++ox)
          if (plan.offset_of(y0, rows, ox, winners[oy * g.ow + ox], at)) out[at] += d[ox];
        continue;
      }
      find_row_winners<kind>(g, plan, in, oy, row);
      for (int64_t ox = 0; ox < g.ow; ++ox) out[row.where[ox]] += d[ox];
    } else {
      const int64_t rows = window_rows(g, oy);
      float* given = row.best.data();
      for (int64_t ox = 0; ox < g.ow; ++ox)
        given[ox] = kind == PoolKind::kAvg ? d[ox] / g.avg_divisor(rows * plan.cells[ox]) : d[ox];
      for_window_runs(g, plan, oy, [&](int64_t iy, int64_t shift, int64_t lo, int64_t hi) {
        float* dst = out + iy * g.w + shift;
        for (int64_t ox = lo; ox < hi; ++ox) dst[ox * g.stride_w] += given[ox];
      });
    }
  }
}

// NHWC kernels work on lane groups of consecutive channels (cpu/lanes.h). A max window is
// a chain of compare and select per cell, and one chain leaves the core mostly waiting, so
// each group runs K independent chains. The widths differ per build, so the builds never
// share an instantiation of the geometry.h helpers.

// The real cells of one window of an NHWC image: rows [y0, y1), columns [x0, x1). For the
// backward, the cells at or past row first_y and column first_x are reached by no earlier
// window (in row-major order of windows), so the gradient is stored there, not added.
struct Cells {
  int64_t y0, y1, x0, x1;
  int64_t row, pixel;  // strides in floats
  int64_t first_y = 0, first_x = 0;
  Cells(const PoolGeometry& g, int64_t oy, int64_t ox) : row(g.w * g.c), pixel(g.c) {
    g.window(oy, ox, y0, y1, x0, x1);
  }
  int64_t count() const { return (y1 - y0) * (x1 - x0); }
  template <class Visit>  // visit(offset, reached first here?) in row-major order
  void each(Visit&& visit) const {
    for (int64_t iy = y0; iy < y1; ++iy)
      for (int64_t ix = x0; ix < x1; ++ix)
        visit(iy * row + ix * pixel, iy >= first_y && ix >= first_x);
  }
};

// Whether a walk over a window's K registers of cells met a NaN. kSums: one add per cell
// and register, a NaN cell making its lane's sum NaN (so do both infinities in a lane,
// which only sends the window to the exact rule for nothing). Else a compare per cell,
// whose mask leaves the vector unit: the forward walks measured 8-20 % faster with sums,
// the backward's 10 % slower.
template <class V, int K, bool kSums>
struct NanWatch {
  V sums[K] = {};
  decltype(V{} != V{}) marks{};
  [[gnu::always_inline]] void see(int k, V v) {
    if constexpr (kSums)
      sums[k] = sums[k] + v;
    else
      marks |= v != v;
  }
  [[gnu::always_inline]] bool met() const {
    if constexpr (kSums) {
      V total = sums[0];
      for (int k = 1; k < K; ++k) total = total + sums[k];
      return any_lane(total != total);
    } else {
      return any_lane(marks);
    }
  }
};

// Each lane's extreme of one window by the rule (the first of equal values, a NaN wins) into
// best; true if a lane met a NaN. MAXPS / MINPS keep the first of equal values, as
// `replaces` does, but pass over NaN; a group whose window holds a NaN is redone by the rule.
template <PoolKind kind, bool kSums, class V, int K>
[[gnu::always_inline]] inline bool window_extreme(LaneGroup<V, K> lanes, const Cells& w,
                                                  const float* x, V* best) {
  NanWatch<V, K, kSums> nan;
  for (int k = 0; k < K; ++k) best[k] = splat<V>(identity<kind>());
  w.each([&](int64_t at, bool) {
    for (int k = 0; k < K; ++k) {
      const V v = load<V>(x + at + k * lanes.kStep);
      best[k] = extreme_or_first<kind == PoolKind::kMax>(best[k], v);
      nan.see(k, v);
    }
  });
  if (!nan.met()) return false;
  for (int k = 0; k < K; ++k) best[k] = splat<V>(identity<kind>());
  w.each([&](int64_t at, bool) {
    for (int k = 0; k < K; ++k) {
      const V v = load<V>(x + at + k * lanes.kStep);
      best[k] = PoolGeometry::replaces(kind, v, best[k]) ? v : best[k];
    }
  });
  return true;
}

// Each lane's extreme of one window by the rule into best, and the number of its first cell
// that holds it (row-major among the window's real cells) into cell. A strict compare keeps
// the first of equal values; a group whose window holds a NaN is redone by the rule.
template <PoolKind kind, class V, int K>
[[gnu::always_inline]] inline void window_winners(LaneGroup<V, K> lanes, const Cells& w,
                                                  const float* x, V* best, V* cell) {
  const auto scan = [&](auto rule) {
    for (int k = 0; k < K; ++k) {
      best[k] = splat<V>(identity<kind>());
      cell[k] = V{};  // the first cell wins if every cell equals the identity
    }
    NanWatch<V, K, true> nan;
    float here = 0.f;
    w.each([&](int64_t at, bool) {
      for (int k = 0; k < K; ++k) {
        const V v = load<V>(x + at + k * lanes.kStep);
        const auto take = rule(v, best[k]);
        best[k] = take ? v : best[k];
        cell[k] = take ? splat<V>(here) : cell[k];
        nan.see(k, v);
      }
      here += 1.f;
    });
    return nan.met();
  };
  if (scan([](V v, V b) { return kind == PoolKind::kMax ? v > b : v < b; }))
    scan([](V v, V b) { return PoolGeometry::replaces(kind, v, b); });
}

// Forward of one window for the lanes at x (the image's pixel (0, 0)) into y, and with
// kWinners (max/min) into winners too.
template <PoolKind kind, bool kStream, bool kWinners, class V, int K>
[[gnu::always_inline]] inline void forward_lanes(LaneGroup<V, K> lanes, const PoolGeometry& g,
                                                 const Cells& w, const float* x, float* y,
                                                 uint8_t* winners) {
  V acc[K];
  if constexpr (kWinners) {
    V cell[K];
    window_winners<kind>(lanes, w, x, acc, cell);
    for (int k = 0; k < K; ++k) store_bytes(winners + k * lanes.kStep, cell[k]);
  } else if constexpr (is_extreme(kind)) {
    window_extreme<kind, true>(lanes, w, x, acc);
  } else {
    for (int k = 0; k < K; ++k) acc[k] = splat<V>(identity<kind>());
    w.each([&](int64_t at, bool) {
      for (int k = 0; k < K; ++k) acc[k] = acc[k] + load<V>(x + at + k * lanes.kStep);
    });
  }
  const V scale = splat<V>(kind == PoolKind::kAvg ? 1.f / g.avg_divisor(w.count()) : 1.f);
  for (int k = 0; k < K; ++k)
    store_out<kStream>(y + k * lanes.kStep, kind == PoolKind::kAvg ? acc[k] * scale : acc[k]);
}

// Forward of output row oy of NHWC image b, all channels.
template <PoolKind kind, bool kStream, bool kWinners>
void forward_nhwc_row(const PoolGeometry& g, const float* x, float* y, uint8_t* winners, int64_t b,
                      int64_t oy) {
  const float* image = x + b * g.h * g.w * g.c;
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    const Cells w(g, oy, ox);
    const int64_t out = ((b * g.oh + oy) * g.ow + ox) * g.c;
    for_lane_groups(g.c, [&](auto lanes, int64_t c) {
      forward_lanes<kind, kStream, kWinners>(lanes, g, w, image + c, y + out + c,
                                             kWinners ? winners + out + c : nullptr);
    });
  }
  if (kStream) stream_fence();
}

// Backward of one window for the lanes at x, dx (the item's pixel (0, 0)); d is the
// window's dy and, with kWinners (max/min), winners its saved winners. With them, the gradient
// goes to the cell whose number they hold. Without, max/min finds each lane's winning value,
// then walks the cells again giving the gradient to the first cell that holds it (`pending`
// drops to 0 once given). A cell no earlier window reached gets 0 + the gradient, which is
// what adding to a zeroed cell would give (a -0 lands as +0); the others add to it.
template <PoolKind kind, bool kStream, bool kWinners, class V, int K>
inline void backward_lanes(LaneGroup<V, K> lanes, const PoolGeometry& g, const Cells& w,
                           const float* d, const float* x, const uint8_t* winners, float* dx) {
  const auto put = [](float* out, bool first, V given) {
    if (first)
      store_out<kStream>(out, V{} + given);
    else
      store(out, load<V>(out) + given);
  };
  if constexpr (kWinners) {
    V given[K], cell[K];
    for (int k = 0; k < K; ++k) {
      given[k] = load<V>(d + k * lanes.kStep);
      cell[k] = load_bytes<V>(winners + k * lanes.kStep);
    }
    float here = 0.f;
    w.each([&](int64_t at, bool first) {
      for (int k = 0; k < K; ++k)
        put(dx + at + k * lanes.kStep, first, cell[k] == splat<V>(here) ? given[k] : V{});
      here += 1.f;
    });
  } else if constexpr (is_extreme(kind)) {
    V best[K], pending[K];
    for (int k = 0; k < K; ++k) pending[k] = load<V>(d + k * lanes.kStep);
    // Without a NaN in the window, holding the winning value is plain equality.
    const bool nan = window_extreme<kind, false>(lanes, w, x, best);
    w.each([&](int64_t at, bool first) {
      for (int k = 0; k < K; ++k) {
        const V v = load<V>(x + at + k * lanes.kStep);
        const auto hit = nan ? PoolGeometry::holds_winner(v, best[k]) : v == best[k];
        put(dx + at + k * lanes.kStep, first, hit ? pending[k] : V{});
        pending[k] = hit ? V{} : pending[k];
      }
    });
  } else {
    const V scale = splat<V>(kind == PoolKind::kAvg ? 1.f / g.avg_divisor(w.count()) : 1.f);
    V given[K];
    for (int k = 0; k < K; ++k) {
      given[k] = load<V>(d + k * lanes.kStep);
      if (kind == PoolKind::kAvg) given[k] = given[k] * scale;
    }
    w.each([&](int64_t at, bool first) {
      for (int k = 0; k < K; ++k) put(dx + at + k * lanes.kStep, first, given[k]);
    });
  }
}

// First input row owned by the NHWC backward item that starts at output row oy: rows up to
// the next item's window belong to the previous item (meaningful when windows do not
// overlap vertically; items with overlap start at 0 and end at oh).
int64_t first_owned_row(const PoolGeometry& g, int64_t oy) {
  if (oy == 0) return 0;
  if (oy == g.oh) return g.h;
  return std::min(std::max(oy * g.stride_h - g.pad_top, int64_t{0}), g.h);
}

// Channels per NHWC backward item where windows share rows (an item then runs all rows of
// its image): all of them, as reading whole pixels lets the prefetchers stream the rows,
// unless there are too few images to give every thread a few items; then blocks of at least
// 32 channels (128 bytes).
int64_t shared_rows_channel_block(const PoolGeometry& g) {
  constexpr int64_t kMinBlock = 32;
  const int64_t wanted_blocks = (4 * num_threads() + g.n - 1) / g.n;
  const int64_t blocks = std::max<int64_t>(1, std::min(wanted_blocks, g.c / kMinBlock));
  return ((g.c + blocks - 1) / blocks + kMinBlock - 1) / kMinBlock * kMinBlock;
}

// Backward of output rows [oy0, oy1), channels [c0, c0+cn) of NHWC image b; the item owns
// those channels of input rows [first_owned_row(oy0), first_owned_row(oy1)). Each dx cell is
// stored by the first window that reaches it and added to by later ones; cells that no
// window reaches are zeroed. No zero-fill pass: dx is written to memory once. Max/min reads
// its winners from `winners` with kWinners, else from x.
template <PoolKind kind, bool kStream, bool kWinners>
void backward_nhwc_rows(const PoolGeometry& g, const float* dy, const float* x,
                        const uint8_t* winners, float* dx, int64_t b, int64_t oy0, int64_t oy1,
                        int64_t c0, int64_t cn) {
  const int64_t image = b * g.h * g.w * g.c + c0;
  const float* xi = kWinners ? nullptr : x + image;
  float* dxi = dx + image;
  const auto zero = [&](int64_t r0, int64_t r1, int64_t col0, int64_t col1) {
    if (col0 >= col1) return;
    for (int64_t iy = r0; iy < r1; ++iy) {
      float* row = dxi + iy * g.w * g.c;
      if (cn == g.c)
        std::fill(row + col0 * g.c, row + col1 * g.c, 0.f);
      else
        for (int64_t ix = col0; ix < col1; ++ix) std::fill_n(row + ix * g.c, cn, 0.f);
    }
  };
  int64_t reached = first_owned_row(g, oy0);  // rows before it are written or zeroed
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    int64_t y0, y1, x0, x1;
    g.window(oy, 0, y0, y1, x0, x1);
    zero(reached, y0, 0, g.w);  // rows between windows
    const int64_t first_y = std::max(reached, y0);
    int64_t reached_x = 0;  // in rows [first_y, y1), columns before it are written or zeroed
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      Cells w(g, oy, ox);
      zero(first_y, y1, reached_x, w.x0);  // columns between windows
      w.first_y = first_y;
      w.first_x = reached_x;
      reached_x = std::max(reached_x, w.x1);
      const int64_t out = ((b * g.oh + oy) * g.ow + ox) * g.c + c0;
      // max/min finds each window's winner before it writes: pairs of registers halve the
      // windows walked per channel where a pixel has few channels
      for_lane_groups<is_extreme(kind)>(cn, [&](auto lanes, int64_t c) {
        backward_lanes<kind, kStream, kWinners>(lanes, g, w, dy + out + c,
                                                kWinners ? nullptr : xi + c,
                                                kWinners ? winners + out + c : nullptr, dxi + c);
      });
    }
    zero(first_y, y1, reached_x, g.w);
    reached = std::max(reached, y1);
  }
  zero(reached, first_owned_row(g, oy1), 0, g.w);
  if (kStream) stream_fence();
}

// The sum of a vector's lanes, adding its halves until four lanes are left: a register's
// halves add in two instructions, where 16 lanes one by one would be a chain of 16 adds.
typedef float Floats4 __attribute__((vector_size(16)));
inline float lane_sum(Floats4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
#if defined(__AVX__)
typedef float Floats8 __attribute__((vector_size(32)));
inline float lane_sum(Floats8 v) {
  const __m256 r = reinterpret_cast<__m256>(v);
  return lane_sum(reinterpret_cast<Floats4>(
      _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1))));
}
#endif
#if defined(__AVX512F__)
typedef float Floats16 __attribute__((vector_size(64)));
inline float lane_sum(Floats16 v) {
  const __m512 r = reinterpret_cast<__m512>(v);
  return lane_sum(reinterpret_cast<Floats8>(
      _mm256_add_ps(_mm512_castps512_ps256(r), _mm512_extractf32x8_ps(r, 1))));
}
#endif

// Sum of n contiguous floats (a fixed order, so repeatable): whole vectors in K independent
// sums, as one running sum would wait on each add, then their lanes, then the last n % lanes
// floats. A small plane (7x7 is 49 floats) is still mostly whole vectors.
inline float plane_sum(const float* p, int64_t n) {
  constexpr int K = 4;
  constexpr int64_t kStep = LaneGroup<Lanes, 1>::kStep;
  Lanes acc[K] = {};
  int64_t i = 0;
  for (; i + K * kStep <= n; i += K * kStep)
    for (int k = 0; k < K; ++k) acc[k] += load<Lanes>(p + i + k * kStep);
  for (; i + kStep <= n; i += kStep) acc[0] += load<Lanes>(p + i);  // fewer than K left
  float total = lane_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; i < n; ++i) total += p[i];
  return total;
}

// Whether an NHWC pass writes its output of `count` floats with streaming stores: only where
// windows do not overlap, as the backward adds to cells an earlier window stored (a streamed
// line would come back from memory), and the forward measured slower with overlap.
bool streams(const PoolGeometry& g, int64_t count) {
  return g.kh <= g.stride_h && g.kw <= g.stride_w && streams_output(count);
}

// f(std::true_type{}) where max/min saves or reads `winners`, else f(std::false_type{}): the
// NHWC kernels are compiled both ways, so those without winners carry no test for them.
template <PoolKind kind, class F>
void with_winners(const uint8_t* winners, F&& f) {
  if constexpr (is_extreme(kind))
    if (winners) return f(std::true_type{});
  f(std::false_type{});
}

// winners: where max/min saves its winners, or nullptr.
template <PoolKind kind>
void forward(const PoolGeometry& g, const float* x, float* y, uint8_t* winners) {
  if (g.channels_last) {
    with_streaming(streams(g, g.n * g.oh * g.ow * g.c), [&](auto streamed) {
      with_winners<kind>(winners, [&](auto saved) {
        for_row_runs(g, [&](int64_t first, int64_t last) {
          for (int64_t row = first; row < last; ++row)
            forward_nhwc_row<kind, decltype(streamed)::value, decltype(saved)::value>(
                g, x, y, winners, row / g.oh, row % g.oh);
        });
      });
    });
  } else if (!is_extreme(kind) && g.oh == 1 && g.ow == 1 && g.kh - g.pad_top >= g.h &&
             g.kw - g.pad_left >= g.w) {
    // Global average or sum (one window over each whole NCHW plane): a plain reduction of
    // contiguous floats.
    const int64_t plane = g.h * g.w;
    const float divisor = kind == PoolKind::kAvg ? g.avg_divisor(plane) : 1.f;
    for_plane_runs(g, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) y[p] = plane_sum(x + p * plane, plane) / divisor;
    });
  } else {
    const ColumnPlan plan(g);
    for_plane_runs(g, [&](int64_t first, int64_t last) {
      RowWinners row(g);
      for (int64_t plane = first; plane < last; ++plane) {
        const int64_t out = plane * g.oh * g.ow;
        forward_plane<kind>(g, plan, x + plane * g.h * g.w, y + out,
                            winners ? winners + out : nullptr, row);
      }
    });
  }
}

// Max/min reads its winners from `winners` where not nullptr, else from x.
template <PoolKind kind>
void backward(const PoolGeometry& g, const float* dy, const float* x, const uint8_t* winners,
              float* dx) {
  if (g.channels_last) {
    with_streaming(streams(g, g.n * g.h * g.w * g.c), [&](auto streamed) {
      with_winners<kind>(winners, [&](auto saved) {
        constexpr bool kStream = decltype(streamed)::value, kWinners = decltype(saved)::value;
        if (g.kh <= g.stride_h) {  // an input row meets one output row: items are row runs
          for_row_runs(g, [&](int64_t first, int64_t last) {
            for (int64_t row = first; row < last;) {  // the run's rows in each image
              const int64_t oy = row % g.oh, rows = std::min(g.oh - oy, last - row);
              backward_nhwc_rows<kind, kStream, kWinners>(g, dy, x, winners, dx, row / g.oh, oy,
                                                          oy + rows, 0, g.c);
              row += rows;
            }
          });
        } else {  // rows shared by output rows: items are (image, channel block), all rows
          const int64_t block = shared_rows_channel_block(g), blocks = (g.c + block - 1) / block;
          parallel_for(g.n * blocks, [&](int64_t item) {
            const int64_t c0 = item % blocks * block;
            backward_nhwc_rows<kind, kStream, kWinners>(g, dy, x, winners, dx, item / blocks, 0,
                                                        g.oh, c0, std::min(block, g.c - c0));
          });
        }
      });
    });
  } else {
    const ColumnPlan plan(g);
    for_plane_runs(g, [&](int64_t first, int64_t last) {
      RowWinners row(g);
      for (int64_t plane = first; plane < last; ++plane) {
        const int64_t in = plane * g.h * g.w, out = plane * g.oh * g.ow;
        backward_plane<kind>(g, plan, dy + out, x ? x + in : nullptr,
                             winners ? winners + out : nullptr, dx + in, row);
      }
    });
  }
}

}  // namespace

void pool2d_forward(const PoolGeometry& g, const float* x, float* y) {
  with_pool_kind(g.pool_kind(), [&](auto kind) { forward<kind.value>(g, x, y, nullptr); });
}

void pool2d_backward(const PoolGeometry& g, const float* dy, const float* x, float* dx) {
  with_pool_kind(g.pool_kind(), [&](auto kind) { backward<kind.value>(g, dy, x, nullptr, dx); });
}

void pool2d_forward_winners(const PoolGeometry& g, const float* x, float* y, uint8_t* winners) {
  with_pool_kind(g.pool_kind(), [&](auto kind) { forward<kind.value>(g, x, y, winners); });
}

void pool2d_backward_winners(const PoolGeometry& g, const float* dy, const uint8_t* winners,
                             float* dx) {
  with_pool_kind(g.pool_kind(),
                 [&](auto kind) { backward<kind.value>(g, dy, nullptr, winners, dx); });
}

}  // namespace fastconv::cpu::FASTCONV_ISA
