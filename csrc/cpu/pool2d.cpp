// Max / min / average / sum pooling on the CPU, forward and backward, one pass each.
//
// Windows are clipped to the real input (see PoolGeometry::window), so padding never wins a
// max or a min and averages divide by the real cells (or KH*KW with count_include_pad).
// Max/min backward recomputes the winner -- the first extreme in row-major order, NaN
// counting as extreme -- instead of storing indices, so the API needs only x and dy.
// NCHW works plane by plane; NHWC works on a block of channels of a pixel at a time, the
// channels being contiguous.
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int64_t kChannelBlock = 64;  // NHWC: channels per work item / accumulator block

// Does v replace the current winner? Strict comparison keeps the first of equal values;
// a NaN replaces any number, and nothing replaces a NaN.
template <PoolKind kind>
inline bool wins(float v, float best) {
  if (kind == PoolKind::kMax) return v > best || (v != v && best == best);
  return v < best || (v != v && best == best);
}

template <PoolKind kind>
constexpr bool is_extreme() { return kind == PoolKind::kMax || kind == PoolKind::kMin; }

// Forward of one NCHW plane.
template <PoolKind kind>
void forward_plane(const PoolGeometry& g, const float* in, float* out) {
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      int64_t y0, y1, x0, x1;
      g.window(oy, ox, y0, y1, x0, x1);
      float acc = is_extreme<kind>() ? in[y0 * g.w + x0] : 0.f;
      for (int64_t y = y0; y < y1; ++y)
        for (int64_t x = x0; x < x1; ++x) {
          const float v = in[y * g.w + x];
          if constexpr (is_extreme<kind>()) acc = wins<kind>(v, acc) ? v : acc;
          else acc += v;
        }
      if (kind == PoolKind::kAvg) acc /= g.avg_divisor((y1 - y0) * (x1 - x0));
      out[oy * g.ow + ox] = acc;
    }
}

template <PoolKind kind>
void backward_plane(const PoolGeometry& g, const float* grad, const float* in, float* out) {
  std::fill(out, out + g.h * g.w, 0.f);
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      int64_t y0, y1, x0, x1;
      g.window(oy, ox, y0, y1, x0, x1);
      const float d = grad[oy * g.ow + ox];
      if constexpr (is_extreme<kind>()) {
        int64_t best = y0 * g.w + x0;
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x)
            if (wins<kind>(in[y * g.w + x], in[best])) best = y * g.w + x;
        out[best] += d;
      } else {
        const float share =
            kind == PoolKind::kAvg ? d / g.avg_divisor((y1 - y0) * (x1 - x0)) : d;
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x) out[y * g.w + x] += share;
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
  for (int64_t oy = 0; oy < g.oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      int64_t y0, y1, x0, x1;
      g.window(oy, ox, y0, y1, x0, x1);
      const float* d = dy + ((b * g.oh + oy) * g.ow + ox) * g.c + c0;
      if constexpr (is_extreme<kind>()) {
        const int64_t first = ((b * g.h + y0) * g.w + x0) * g.c + c0;
        for (int64_t c = 0; c < cn; ++c) best[c] = first + c;
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) {
            const int64_t at = ((b * g.h + iy) * g.w + ix) * g.c + c0;
            for (int64_t c = 0; c < cn; ++c)
              if (wins<kind>(x[at + c], x[best[c]])) best[c] = at + c;
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
    parallel_for(g.n * g.c, [&](int64_t plane) {
      forward_plane<kind>(g, x + plane * g.h * g.w, y + plane * g.oh * g.ow);
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
    parallel_for(g.n * g.c, [&](int64_t plane) {
      backward_plane<kind>(g, dy + plane * g.oh * g.ow, x + plane * g.h * g.w, dx + plane * g.h * g.w);
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
