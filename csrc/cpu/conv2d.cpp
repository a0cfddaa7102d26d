// Dense (and grouped) 2-D convolution on the CPU: forward, backward-input, backward-weight,
// in NCHW and NHWC, as GEMMs that never materialise the im2col matrix.
//
// Per group g (Cg = C_in/G input channels, Mg = C_out/G output channels, K = Cg*KH*KW,
// P = OH*OW output pixels):
//   NCHW forward      y[n, g]   (Mg x P)   = W_g (Mg x K) * col(x[n, g]) (K x P)
//   NHWC forward      y[pixels] (P x Mg)   = col(x)^T (P x K') * W_g^T (K' x Mg)
//   backward input    stride 1: a forward conv of dy with the flipped, transposed kernel;
//                     otherwise dcol = W^T dy, scattered back (col2im)
//   backward weight   dW_g += dy[n, g] * col(x[n, g])^T, summed over images/pixels
// K is ordered (ci, ky, kx) in NCHW and (ky, kx, ci) in NHWC (K'), so that the gather reads
// contiguous memory in each layout. NCHW packs col(x) on the fly; NHWC reads each pixel's
// Cg channels at every tap in place (micro_tile_rows / micro_tile_cols take row pointers).
// Which of these (or Winograd, the direct kernels for few input channels, or the depthwise
// kernels) runs is select_conv_algorithm's choice (conv2d_algorithm.h).
#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <vector>

#include "cpu/bias_sums.h"
#include "cpu/conv2d_algorithm.h"
#include "cpu/conv2d_direct.h"
#include "cpu/conv2d_winograd.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/lanes.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int64_t kPixelChunk = 256;  // NCHW: output pixels per work item (B panel in L2)
constexpr int64_t kTilePixels = 64;   // NHWC weight gradient: the depth of a micro-tile's sum

// visit(j, offset) for output pixels p0 + j, j < count, of tap (ky, kx) on one NCHW plane;
// offset is the input element's offset in the plane, or -1 where the tap reads padding.
template <class Visit>
inline void for_tap_pixels(const ConvGeometry& g, int64_t ky, int64_t kx, int64_t p0, int64_t count,
                           Visit&& visit) {
  int64_t oy = p0 / g.ow, ox = p0 % g.ow;
  for (int64_t j = 0; j < count; ++oy, ox = 0) {
    const int64_t run = std::min(count - j, g.ow - ox);
    const int64_t iy = g.in_row(oy, ky);
    const bool row_ok = iy >= 0 && iy < g.h;
    for (int64_t t = 0; t < run; ++t) {
      const int64_t ix = g.in_col(ox + t, kx);
      visit(j + t, row_ok && ix >= 0 && ix < g.w ? iy * g.w + ix : int64_t{-1});
    }
    j += run;
  }
}

// Offset of input pixel (b, iy, ix) at channel c0 in NHWC, or -1 for padding.
inline int64_t nhwc_tap(const ConvGeometry& g, int64_t b, int64_t oy, int64_t ox, int64_t ky,
                        int64_t kx, int64_t c0) {
  const int64_t iy = g.in_row(oy, ky), ix = g.in_col(ox, kx);
  if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return -1;
  return ((b * g.h + iy) * g.w + ix) * g.c_in + c0;
}

// set(i, t, row) for pixels p0 + i, i < count (over the whole batch; pixels past the batch
// read `zeros`) and taps t: `row` is where pixel p0 + i's input channels c0.. are at tap t in
// NHWC x, or `zeros` where the tap reads padding. A pixel whose window lies inside the
// input finds every tap at a fixed distance from its first, without bounds checks.
template <class Set>
void for_tap_rows(const ConvGeometry& g, const float* x, int64_t c0, const float* zeros, int64_t p0,
                  int64_t count, Set&& set) {
  const int64_t taps = g.kh * g.kw, pixels = g.n * g.oh * g.ow;
  const int64_t reach_h = (g.kh - 1) * g.dil_h, reach_w = (g.kw - 1) * g.dil_w;
  thread_local std::vector<int64_t> delta;  // tap t's distance from tap 0, inside the input
  delta.resize(taps);
  for (int64_t t = 0; t < taps; ++t)
    delta[t] = (t / g.kw * g.dil_h * g.w + t % g.kw * g.dil_w) * g.c_in;
  int64_t b = 0, oy = 0, ox = 0;  // pixel p0 + i, advanced one pixel at a time
  ConvGeometry::split_pixel(std::min(p0, pixels - 1), g.oh, g.ow, b, oy, ox);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t iy = g.in_row(oy, 0), ix = g.in_col(ox, 0);
    if (p0 + i >= pixels) {
      for (int64_t t = 0; t < taps; ++t) set(i, t, zeros);
    } else if (iy >= 0 && iy + reach_h < g.h && ix >= 0 && ix + reach_w < g.w) {
      const float* first = x + ((b * g.h + iy) * g.w + ix) * g.c_in + c0;
      for (int64_t t = 0; t < taps; ++t) set(i, t, first + delta[t]);
    } else {
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t off = nhwc_tap(g, b, oy, ox, t / g.kw, t % g.kw, c0);
        set(i, t, off >= 0 ? x + off : zeros);
      }
    }
    if (++ox == g.ow) {
      ox = 0;
      if (++oy == g.oh) oy = 0, ++b;
    }
  }
}

// A row of zeros at least `n` floats long, for padding taps; one per thread.
const float* zero_row(int64_t n) {
  thread_local std::vector<float> zeros;
  if (static_cast<int64_t>(zeros.size()) < n) zeros.assign(n, 0.f);
  return zeros.data();
}

// B operand of the NCHW forward: column j = output pixel p_base + j, depth k = (ci, ky, kx)
// of one image's group; `planes` points at that group's first input channel.
struct NchwColumnPacker {
  const ConvGeometry& g;
  const float* planes;
  int64_t p_base;
  Panel operator()(int64_t j0, int64_t nc, int64_t k0, int64_t kc) const {
    Buffer& buf = scratch_b();
    buf.resize(round_up(nc, NR) * kc);
    const int64_t taps = g.kh * g.kw, stride = kc * NR;
    for (int64_t kk = 0; kk < kc; ++kk) {
      const int64_t k = k0 + kk, ky = k % taps / g.kw, kx = k % g.kw;
      const float* plane = planes + (k / taps) * g.h * g.w;
      for (int64_t s = 0; s < nc; s += NR) {
        float* d = buf.data() + s / NR * stride + kk * NR;
        const int64_t count = std::min(NR, nc - s), p = p_base + j0 + s;
        const int64_t oy = p / g.ow, ox = p % g.ow, iy = g.in_row(oy, ky), ix = g.in_col(ox, kx);
        // Fast path: the sliver lies in one output row and reads one input row, in bounds.
        const int64_t sw = g.stride_w;
        if (ox + count <= g.ow && iy >= 0 && iy < g.h && ix >= 0 && ix + (count - 1) * sw < g.w) {
          const float* src = plane + iy * g.w + ix;
          if (sw == 1)
            std::memcpy(d, src, sizeof(float) * count);
          else
            for (int64_t j = 0; j < count; ++j) d[j] = src[j * sw];
        } else {
          for_tap_pixels(g, ky, kx, p, count,
                         [&](int64_t j, int64_t off) { d[j] = off >= 0 ? plane[off] : 0.f; });
        }
        std::fill(d + count, d + NR, 0.f);
      }
    }
    return {buf.data(), stride};
  }
};

// Per-call copies of the weights (reordered, flipped, packed) go into buffers owned by the
// calling thread and reused from call to call: a wide layer's weights are megabytes, and
// fresh pages would cost a page fault each on first touch. A lambda run by other threads
// must capture a reference to such a buffer, not name the thread_local.
std::vector<Buffer>& weight_buffers(int64_t groups) {
  thread_local std::vector<Buffer> buffers;
  buffers.resize(groups);
  return buffers;
}

// W_g reordered to (Mg x K') with K' = (ky, kx, ci): the NHWC depth order; valid until the
// next call on this thread. A 1x1 kernel is already in that order.
const float* weights_tap_major(const ConvGeometry& g, const float* w, int64_t group) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const float* wg = w + group * mg * cg * taps;
  if (taps == 1) return wg;
  thread_local std::vector<float> reordered;
  std::vector<float>& out = reordered;  // written by the workers below
  out.resize(mg * cg * taps);
  parallel_for(mg, [&](int64_t o) {
    for (int64_t ci = 0; ci < cg; ++ci)
      for (int64_t t = 0; t < taps; ++t)
        out[(o * taps + t) * cg + ci] = wg[(o * cg + ci) * taps + t];
  });
  return out.data();
}

void forward_nchw(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                  float* y) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), K = cg * g.kh * g.kw;
  const int64_t P = g.oh * g.ow, chunks = (P + kPixelChunk - 1) / kPixelChunk;
  std::vector<Buffer>& packed = weight_buffers(g.groups);
  for (int64_t grp = 0; grp < g.groups; ++grp)
    prepack(packed[grp], w + grp * mg * K, K, 1, mg, K, MR);
  parallel_for(g.n * g.groups * chunks, [&](int64_t item) {
    const int64_t chunk = item % chunks, grp = item / chunks % g.groups,
                  b = item / chunks / g.groups;
    const int64_t p0 = chunk * kPixelChunk, nc = std::min(kPixelChunk, P - p0);
    NchwColumnPacker cols{g, x + (b * g.c_in + grp * cg) * g.h * g.w, p0};
    float* out = y + (b * g.c_out + grp * mg) * P + p0;
    auto weights = [&](int64_t i0, int64_t, int64_t k0, int64_t) {
      return prepacked_panel(packed[grp], K, MR, i0, k0);
    };
    gemm(mg, nc, K, weights, as_b(cols), out, P, false);
    if (bias)
      for (int64_t o = 0; o < mg; ++o)
        for (int64_t j = 0; j < nc; ++j) out[o * P + j] += bias[grp * mg + o];
  });
}

// The NHWC forward's B operand, each group's weights as NR-slivers of output channels over
// the depth (tap, input channel), packed from w in one pass. With `flipped`, w holds the
// weights of the convolution whose input gradient g computes: g's input and output channels
// swapped and its taps in reverse order, so that the flipped kernel is never written out.
void pack_weights_nhwc(const ConvGeometry& g, const float* w, bool flipped,
                       std::vector<Buffer>& packed) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const int64_t K = cg * taps, slivers = (mg + NR - 1) / NR;
  for (Buffer& b : packed) b.resize(slivers * K * NR);
  if (!flipped) {  // a filter is a row of depth (i, t): 8x8 transposes put it in (t, i) order
    thread_local std::vector<int64_t> tap_major;
    std::vector<int64_t>& order = tap_major;  // read by the workers below
    order.resize(K);
    for (int64_t q = 0; q < K; ++q) order[q] = q % taps * cg + q / taps;
    parallel_for(g.groups * slivers, [&](int64_t item) {
      const int64_t s = item % slivers, grp = item / slivers, n = std::min(NR, mg - s * NR);
      const float* rows[NR];
      for (int64_t r = 0; r < n; ++r) rows[r] = w + (grp * mg + s * NR + r) * K;
      pack_rows(rows, n, K, NR, packed[grp].data() + s * K * NR, taps > 1 ? order.data() : nullptr);
    });
    return;
  }
  // Weight (o, i, t) of a group is at o * taps + i * mg * taps + taps - 1 - t: for one (i, t),
  // the sliver's NR weights lie within NR * taps floats.
  parallel_for(g.groups * slivers * taps, [&](int64_t item) {
    const int64_t t = item % taps, s = item / taps % slivers, grp = item / taps / slivers;
    const int64_t n = std::min(NR, mg - s * NR);
    const float* from = w + grp * mg * K + s * NR * taps + taps - 1 - t;
    float* to = packed[grp].data() + (s * K + t * cg) * NR;
    for (int64_t i = 0; i < cg; ++i, from += mg * taps, to += NR) {
      for (int64_t j = 0; j < n; ++j) to[j] = from[j * taps];
      std::fill(to + n, to + NR, 0.f);
    }
  });
}

// NHWC forward as an implicit GEMM: y (pixels x Mg) = rows (pixels x K') * W_g^T, where a
// pixel's row at tap t is its C_g input channels there, read in place by micro_tile_rows
// (padding reads a row of zeros): nothing of x is packed.
//
// Work items are runs of MR-pixel blocks. A tile runs its whole depth in registers and
// stores each output once; the weights (K' x Mg) stream from L2, which the hardware
// prefetcher keeps up with, so the taps are not blocked for L1. Weights larger than half of
// L2 (3x3 256->512: 4.5 MiB) would stream from L3 once per block; then an item holds as many
// blocks as half of L2 keeps the x rows of, and runs them sliver by sliver, so that each
// sliver's weights come from L3 once per item.
void forward_nhwc(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                  float* y, bool flipped = false) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const int64_t K = cg * taps, slivers = (mg + NR - 1) / NR;
  std::vector<Buffer>& packed = weight_buffers(g.groups);
  pack_weights_nhwc(g, w, flipped, packed);
  const int64_t pixels = g.n * g.oh * g.ow, blocks = (pixels + MR - 1) / MR;
  const int64_t half_l2 = l2_bytes() / 2;
  const bool by_sliver = K * slivers * NR * 4 > half_l2;
  const int64_t most_per_item =
      std::clamp<int64_t>(by_sliver ? half_l2 / (K * MR * 4) : blocks / (8 * num_threads()), 1, 32);
  // A whole number of items per thread, of near-equal size: with few blocks (a small batch of
  // 7x7 maps), items of the most blocks each left one thread idle for up to a third of the
  // call.
  const int64_t items =
      std::min(blocks, round_up((blocks + most_per_item - 1) / most_per_item, num_threads()));
  // A large output is streamed where every tile row is whole cache lines (NR floats are one
  // or two; a last, partial column block stores plainly, its own lines).
  const bool stream = g.groups == 1 && streams_lines(y, g.c_out, g.y_size());
  parallel_for(items * g.groups, [&](int64_t item) {
    const int64_t grp = item % g.groups, run = item / g.groups;
    const int64_t b0 = run * blocks / items, nb = (run + 1) * blocks / items - b0;
    thread_local std::vector<const float*> rows;  // rows[(block * taps + t) * MR + r]
    rows.resize(nb * taps * MR);
    for_tap_rows(g, x, grp * cg, zero_row(cg), b0 * MR, nb * MR,
                 [&](int64_t i, int64_t t, const float* row) {
                   rows[(i / MR * taps + t) * MR + i % MR] = row;
                 });
    thread_local std::vector<const float*> panel;  // panel[s * taps + t]: sliver s, tap t
    panel.resize(slivers * taps);
    for (int64_t s = 0; s < slivers; ++s)
      for (int64_t t = 0; t < taps; ++t)
        panel[s * taps + t] = packed[grp].data() + (s * K + t * cg) * NR;
    const auto tile = [&](int64_t blk, int64_t s) {
      const int64_t p0 = (b0 + blk) * MR;
      micro_tile_rows(taps, cg, rows.data() + blk * taps * MR, panel.data() + s * taps,
                      bias ? bias + grp * mg + s * NR : nullptr,
                      y + p0 * g.c_out + grp * mg + s * NR, g.c_out, std::min(MR, pixels - p0),
                      std::min(NR, mg - s * NR), stream);
    };
    if (by_sliver) {
      for (int64_t s = 0; s < slivers; ++s)
        for (int64_t blk = 0; blk < nb; ++blk) tile(blk, s);
    } else {
      for (int64_t blk = 0; blk < nb; ++blk) {  // a block's rows stay in L1 across the slivers
        if (blk + 1 < nb)
          for (int64_t r = 0; r < taps * MR; ++r)
            prefetch_floats(rows[(blk + 1) * taps * MR + r], cg);
        for (int64_t s = 0; s < slivers; ++s) tile(blk, s);
      }
    }
    if (stream) stream_fence();
  });
}

[[noreturn]] void wrong_algorithm(Algorithm a, const char* pass) {
  throw std::logic_error(std::string("conv2d: algorithm ") + algorithm_name(a) + " has no " + pass);
}

// Forward by algorithm `a`. Winograd reports a non-finite output; the pass then reruns by
// the direct algorithm, so that NaN/Inf reach exactly the outputs whose windows hold them.
void forward_by(Algorithm a, const ConvGeometry& g, const float* x, const float* w,
                const float* bias, float* y) {
  switch (a) {
    case Algorithm::winograd_f4x3:
    case Algorithm::winograd_f3x3:
    case Algorithm::winograd_f2x5:
      if (conv2d_winograd(a, g, x, w, bias, y)) return;
      return forward_by(select_direct_conv_algorithm(g, Direction::forward, kBuildIsa), g, x, w,
                        bias, y);
    case Algorithm::gemm_nchw:
      return forward_nchw(g, x, w, bias, y);
    case Algorithm::gemm_nhwc:
      return forward_nhwc(g, x, w, bias, y);
    case Algorithm::direct_nhwc:
      return conv2d_direct_forward(g, x, w, bias, y);
    case Algorithm::depthwise_nchw:
    case Algorithm::depthwise_nhwc:
      return depthwise_conv2d_forward(g, x, w, bias, y);
    default:
      wrong_algorithm(a, "forward pass");
  }
}

void forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  forward_by(select_conv_algorithm(g, Direction::forward, kBuildIsa), g, x, w, bias, y);
}

// Stride 1: dx is the forward convolution of dy with the kernel flipped in space and with
// input/output channels swapped, padded so that the output has the input's size. Padding
// may come out negative (more padding than the kernel reach): the gather's bounds checks
// handle that as cropping. The NHWC GEMM packs its operand from w as it is; the other
// algorithms get the flipped kernel written out.
void backward_input_as_forward(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  ConvGeometry t = g;
  t.c_in = g.c_out;
  t.c_out = g.c_in;
  t.h = g.oh;
  t.w = g.ow;
  t.oh = g.h;
  t.ow = g.w;
  t.pad_top = g.dil_h * (g.kh - 1) - g.pad_top;
  t.pad_left = g.dil_w * (g.kw - 1) - g.pad_left;
  if (select_conv_algorithm(t, Direction::forward, kBuildIsa) == Algorithm::gemm_nhwc)
    return forward_nhwc(t, dy, w, nullptr, dx, true);
  thread_local std::vector<float> flipped_weights;
  std::vector<float>& flipped = flipped_weights;  // written by the workers below
  flipped.resize(g.w_size());
  parallel_for(g.c_in, [&](int64_t c) {  // one input channel's filters (C_in of the transposed)
    const int64_t grp = c / cg, ci = c % cg;
    for (int64_t o = 0; o < mg; ++o)
      for (int64_t k = 0; k < taps; ++k)
        flipped[(c * mg + o) * taps + (taps - 1 - k)] = w[((grp * mg + o) * cg + ci) * taps + k];
  });
  forward(t, dy, flipped.data(), nullptr, dx);
}

// Strided: dcol = W_g^T dy for a block of pixels, then each column is added back into the
// input positions it was gathered from. One work item owns whole images, so the
// overlapping scatters never race.
void backward_input_col2im_nchw(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const int64_t K = cg * taps, P = g.oh * g.ow;
  std::vector<Buffer>& packed = weight_buffers(g.groups);  // W_g^T: (K x Mg)
  for (int64_t grp = 0; grp < g.groups; ++grp)
    prepack(packed[grp], w + grp * mg * K, 1, K, K, mg, MR);
  parallel_for(g.n * g.groups, [&](int64_t item) {
    const int64_t grp = item % g.groups, b = item / g.groups;
    float* dxg = dx + (b * g.c_in + grp * cg) * g.h * g.w;
    const float* dyg = dy + (b * g.c_out + grp * mg) * P;
    std::memset(dxg, 0, sizeof(float) * cg * g.h * g.w);
    std::vector<float> dcol(K * kPixelChunk);
    for (int64_t p0 = 0; p0 < P; p0 += kPixelChunk) {
      const int64_t nc = std::min(kPixelChunk, P - p0);
      StridedPacker grads{dyg + p0, 1, P, NR, &scratch_b()};
      auto weights = [&](int64_t i0, int64_t, int64_t k0, int64_t) {
        return prepacked_panel(packed[grp], mg, MR, i0, k0);
      };
      gemm(K, nc, mg, weights, as_b(grads), dcol.data(), nc, false);
      for (int64_t k = 0; k < K; ++k) {
        float* plane = dxg + (k / taps) * g.h * g.w;
        const float* src = dcol.data() + k * nc;
        for_tap_pixels(g, k % taps / g.kw, k % taps % g.kw, p0, nc, [&](int64_t j, int64_t off) {
          if (off >= 0) plane[off] += src[j];
        });
      }
    }
  });
}

void backward_input_col2im_nhwc(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const int64_t K = cg * taps, P = g.oh * g.ow;
  std::vector<Buffer>& packed = weight_buffers(g.groups);  // W_g in (ky, kx, ci) order: (Mg x K')
  for (int64_t grp = 0; grp < g.groups; ++grp)
    prepack(packed[grp], weights_tap_major(g, w, grp), 1, K, K, mg, NR);
  parallel_for(g.n, [&](int64_t b) {
    std::memset(dx + b * g.h * g.w * g.c_in, 0, sizeof(float) * g.h * g.w * g.c_in);
    std::vector<float> dcol(MC * K);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      for (int64_t p0 = 0; p0 < P; p0 += MC) {
        const int64_t m = std::min(MC, P - p0);
        StridedPacker grads{dy + (b * P + p0) * g.c_out + grp * mg, g.c_out, 1, MR, &scratch_a()};
        auto weights = [&](int64_t k0, int64_t, int64_t j0, int64_t) {
          return prepacked_panel(packed[grp], mg, NR, j0, k0);
        };
        gemm(m, K, mg, grads, weights, dcol.data(), K, false);
        for (int64_t i = 0; i < m; ++i) {
          const int64_t oy = (p0 + i) / g.ow, ox = (p0 + i) % g.ow;
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t off = nhwc_tap(g, b, oy, ox, t / g.kw, t % g.kw, grp * cg);
            if (off < 0) continue;
            const float* src = dcol.data() + i * K + t * cg;
            for (int64_t ci = 0; ci < cg; ++ci) dx[off + ci] += src[ci];
          }
        }
      }
    }
  });
}

// B operand of the NCHW weight gradient: depth = output pixels p_base + j, column = k.
struct NchwColumnTPacker {
  const ConvGeometry& g;
  const float* planes;
  int64_t p_base;
  Panel operator()(int64_t j0, int64_t n, int64_t p0, int64_t pc) const {
    Buffer& buf = scratch_b();
    buf.assign(round_up(n, NR) * pc, 0.f);
    const int64_t taps = g.kh * g.kw;
    for (int64_t kk = 0; kk < n; ++kk) {
      const int64_t k = j0 + kk, tap = k % taps;
      const float* plane = planes + (k / taps) * g.h * g.w;
      float* col = buf.data() + (kk / NR) * pc * NR + kk % NR;
      for_tap_pixels(g, tap / g.kw, tap % g.kw, p_base + p0, pc, [&](int64_t j, int64_t off) {
        if (off >= 0) col[j * NR] = plane[off];
      });
    }
    return {buf.data(), pc * NR};
  }
};

// B operand of the NHWC weight gradient: column = k' in (ky, kx, ci) order, depth = pixel
// p_base + j over the whole batch. A sliver's NR columns are mostly consecutive channels of
// one tap, i.e. one contiguous run of the input, so a pixel costs one or two copies.
struct NhwcTapColumnPacker {
  const ConvGeometry& g;
  const float* x;
  int64_t group, p_base;
  Panel operator()(int64_t j0, int64_t n, int64_t p0, int64_t pc) const {
    Buffer& buf = scratch_b();
    buf.resize(round_up(n, NR) * pc);
    const int64_t cg = g.cin_per_group(), pixels = g.oh * g.ow;
    for (int64_t s = 0; s < n; s += NR) {
      float* dst = buf.data() + s / NR * pc * NR;
      const int64_t width = std::min(NR, n - s);
      for (int64_t j = 0; j < pc; ++j) {
        const int64_t p = p_base + p0 + j, b = p / pixels, oy = p % pixels / g.ow, ox = p % g.ow;
        float* d = dst + j * NR;
        for (int64_t r = 0; r < width;) {
          const int64_t k = j0 + s + r, tap = k / cg, ci = k % cg,
                        run = std::min(cg - ci, width - r);
          const int64_t off = nhwc_tap(g, b, oy, ox, tap / g.kw, tap % g.kw, group * cg + ci);
          if (off >= 0)
            std::memcpy(d + r, x + off, sizeof(float) * run);
          else
            std::fill_n(d + r, run, 0.f);
          r += run;
        }
        std::fill(d + width, d + NR, 0.f);
      }
    }
    return {buf.data(), pc * NR};
  }
};

// Splits `count` items into `parts` contiguous ranges; range t is [begin, end).
inline void split_range(int64_t count, int64_t parts, int64_t t, int64_t& begin, int64_t& end) {
  begin = count * t / parts;
  end = count * (t + 1) / parts;
}

void backward_weight_nchw(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), K = cg * g.kh * g.kw;
  const int64_t P = g.oh * g.ow, chunks = (P + kPixelChunk - 1) / kPixelChunk;
  const int threads = num_threads();
  std::vector<Buffer>& partial = zeroed_partials(threads, g.w_size());
  parallel_threads(threads, [&](int t, int team) {
    int64_t begin, end;
    split_range(g.n * chunks, team, t, begin, end);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, p0 = item % chunks * kPixelChunk;
      const int64_t pc = std::min(kPixelChunk, P - p0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        StridedPacker grads{dy + (b * g.c_out + grp * mg) * P + p0, P, 1, MR, &scratch_a()};
        NchwColumnTPacker cols{g, x + (b * g.c_in + grp * cg) * g.h * g.w, p0};
        gemm(mg, K, pc, grads, as_b(cols), partial[t].data() + grp * mg * K, K, true);
      }
    }
  });
  reduce_partials(partial, dw, g.w_size());
}

// dw (C_out, C_g, KH, KW) from per-thread partial sums of dW_g (Mg x K') in the NHWC depth
// order (ky, kx, ci): summed in thread order and reordered, one output channel per item.
void tap_major_to_weights(const ConvGeometry& g, const std::vector<Buffer>& partial, float* dw) {
  const int64_t cg = g.cin_per_group(), taps = g.kh * g.kw, K = cg * taps;
  parallel_for(g.c_out, [&](int64_t o) {
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t ci = 0; ci < cg; ++ci) {
        float sum = partial[0][o * K + tap * cg + ci];
        for (size_t t = 1; t < partial.size(); ++t) sum += partial[t][o * K + tap * cg + ci];
        dw[(o * cg + ci) * taps + tap] = sum;
      }
  });
}

// Floats [c0, c0 + width) of rows[0, depth) into `block`, rows NR floats apart; a whole
// column block (width NR) in a few moves each.
void copy_block(const float* const* rows, int64_t depth, int64_t c0, int64_t width, float* block) {
  for (int64_t i = 0; i < depth; ++i)
    if (width == NR)
      std::memcpy(block + i * NR, rows[i] + c0, sizeof(float) * NR);
    else
      std::memcpy(block + i * NR, rows[i] + c0, sizeof(float) * width);
}

// NHWC weight gradient with both operands in place: dW_g (Mg x K') += dy^T x_rows, summed
// over chunks of pixels. A tile is MR output channels x NR channels of one tap; its depth
// steps are the chunk's pixels: MR gradients from a zero-padded copy of the chunk's dy
// (Mg rounded up to MR, so no read runs past it) and NR inputs at the pixel's tap row.
// Needs C_g to be a multiple of NR, or half of NR past one: a tap's last column block is
// then a half-width tile, which reads exactly its channels (C_g = 48 with NR = 32).
//
// The threads split the pixels, each summing a partial dW that is then reduced, unless the
// pixels are few for the size of dW (small maps, wide layers): then they split dW's column
// blocks (tap, channel block) and each sums all the pixels into its own, with no partial to
// zero and reduce. Either way every element sums its chunks in the same order.
//
// With `bias` (one group), the threads also add up the copied chunks of dy for the bias
// gradient, each chunk once (by thread 0 where every thread reads every chunk).
void backward_weight_nhwc(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                          BiasSums* bias) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const int64_t K = cg * taps, pixels = g.n * g.oh * g.ow, ld = round_up(mg, MR);
  const int64_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  const int64_t tap_blocks = (cg + NR - 1) / NR, blocks = taps * tap_blocks;
  const int threads = num_threads();
  const bool split_columns = chunks < 4 * threads && blocks >= 4 * threads;
  std::vector<Buffer>& partial = zeroed_partials(split_columns ? 1 : threads, g.w_size());
  parallel_threads(threads, [&](int t, int team) {
    int64_t begin, end, col_begin = 0, col_end = blocks;  // chunks; (tap, channel block)s
    split_range(chunks, split_columns ? 1 : team, split_columns ? 0 : t, begin, end);
    if (split_columns) split_range(blocks, team, t, col_begin, col_end);
    // A micro-tile reads MR channels of dy per pixel: in place where a group's channels are
    // whole tiles, else from a copy with rows of ld floats, zero past the group's channels.
    const bool in_place = g.groups == 1 && mg % MR == 0;
    std::vector<float> copy(in_place ? 0 : kPixelChunk * ld, 0.f);
    // rows[tap * rows_ld + pixel]: a line past the chunk, as taps 2 KiB apart would share
    // two of an L1's 64 sets, and filling them pixel by pixel missed on every store.
    const int64_t rows_ld = kPixelChunk + 8;
    std::vector<const float*> rows(taps * rows_ld);
    // x's pixels a multiple of 1 KiB apart put a micro-tile's kTilePixels rows of x in 4 of
    // an L1's 64 sets, where they evict each other from one row of tiles to the next: a column
    // block's rows are then copied side by side first, where 16 rows of tiles or more share
    // the copy (with the 6 or 8 rows of 48 or 64 output channels it cost more than it saved).
    const bool copies_x = g.c_in * sizeof(float) % 1024 == 0 && mg >= 16 * MR;
    std::vector<float> x_block(copies_x ? kTilePixels * NR : 0);
    std::vector<const float*> x_block_rows(copies_x ? kTilePixels : 0);
    for (int64_t i = 0; i < static_cast<int64_t>(x_block_rows.size()); ++i)
      x_block_rows[i] = x_block.data() + i * NR;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t p0 = chunk * kPixelChunk, pc = std::min(kPixelChunk, pixels - p0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const float* grads = dy + p0 * g.c_out;
        int64_t grads_ld = g.c_out;
        if (!in_place) {
          for (int64_t j = 0; j < pc; ++j)
            std::memcpy(copy.data() + j * ld, dy + (p0 + j) * g.c_out + grp * mg,
                        sizeof(float) * mg);
          grads = copy.data();
          grads_ld = ld;
        }
        if (bias && (t == 0 || !split_columns)) bias->add_block(t, grads, pc, grads_ld);
        for_tap_rows(
            g, x, grp * cg, zero_row(cg), p0, pc,
            [&](int64_t i, int64_t tap, const float* row) { rows[tap * rows_ld + i] = row; });
        float* out = partial[split_columns ? 0 : t].data() + grp * mg * K;
        // kTilePixels at a time, so that a column block's slice of x stays in L1 across the
        // rows of dW and the slice of dy in L2 across the column blocks.
        for (int64_t q0 = 0; q0 < pc; q0 += kTilePixels)
          for (int64_t col = col_begin; col < col_end; ++col) {
            const int64_t tap = col / tap_blocks, c0 = col % tap_blocks * NR;
            const int64_t depth = std::min(kTilePixels, pc - q0), width = std::min(NR, cg - c0);
            const float* const* x_rows = rows.data() + tap * rows_ld + q0;
            int64_t x_offset = c0;
            if (copies_x) {
              copy_block(x_rows, depth, c0, width, x_block.data());
              x_rows = x_block_rows.data();
              x_offset = 0;
            }
            for (int64_t o0 = 0; o0 < mg; o0 += MR)
              micro_tile_cols(depth, grads + q0 * grads_ld + o0, grads_ld, x_rows, x_offset,
                              out + o0 * K + tap * cg + c0, K, std::min(MR, mg - o0), width, true);
          }
      }
    }
  });
  tap_major_to_weights(g, partial, dw);
}

// The same gradient with x's columns packed per chunk (NhwcTapColumnPacker): for C_g that
// is not a multiple of NR.
void backward_weight_nhwc_packed(const ConvGeometry& g, const float* dy, const float* x,
                                 float* dw) {
  const int64_t mg = g.cout_per_group(), cg = g.cin_per_group(), taps = g.kh * g.kw;
  const int64_t K = cg * taps, pixels = g.n * g.oh * g.ow;
  const int64_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  const int threads = num_threads();
  // Partials hold dW_g (Mg x K') per group, K' in (ky, kx, ci) order.
  std::vector<Buffer>& partial = zeroed_partials(threads, g.w_size());
  parallel_threads(threads, [&](int t, int team) {
    int64_t begin, end;
    split_range(chunks, team, t, begin, end);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t p0 = chunk * kPixelChunk, pc = std::min(kPixelChunk, pixels - p0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        StridedPacker grads{dy + p0 * g.c_out + grp * mg, 1, g.c_out, MR, &scratch_a()};
        NhwcTapColumnPacker cols{g, x, grp, p0};
        gemm(mg, K, pc, grads, as_b(cols), partial[t].data() + grp * mg * K, K, true);
      }
    }
  });
  tap_major_to_weights(g, partial, dw);
}

// The weight gradient by algorithm `a`; Winograd falls back as in forward_by. Given `bias`,
// the NHWC GEMM (one group) and direct kernels, which read every pixel of dy, sum the bias
// gradient into it too; true where one did.
bool backward_weight_by(Algorithm a, const ConvGeometry& g, const float* dy, const float* x,
                        float* dw, BiasSums* bias) {
  switch (a) {
    case Algorithm::winograd_f4x3:
    case Algorithm::winograd_f3x3:
    case Algorithm::winograd_f2x5:
      if (conv2d_winograd_backward_weight(a, g, dy, x, dw)) return false;
      return backward_weight_by(
          select_direct_conv_algorithm(g, Direction::backward_weight, kBuildIsa), g, dy, x, dw,
          bias);
    case Algorithm::gemm_nchw:
      backward_weight_nchw(g, dy, x, dw);
      return false;
    case Algorithm::gemm_nhwc:
      if (g.groups != 1) bias = nullptr;
      backward_weight_nhwc(g, dy, x, dw, bias);
      return bias != nullptr;
    case Algorithm::gemm_nhwc_packed:
      backward_weight_nhwc_packed(g, dy, x, dw);
      return false;
    case Algorithm::direct_nhwc:
      conv2d_direct_backward_weight(g, dy, x, dw, bias);
      return bias != nullptr;
    case Algorithm::depthwise_nchw:
    case Algorithm::depthwise_nhwc:
      depthwise_conv2d_backward_weight(g, dy, x, dw);
      return false;
    default:
      wrong_algorithm(a, "weight gradient");
  }
}

}  // namespace

void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                    float* y) {
  forward(g, x, w, bias, y);
}

void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  Algorithm a = select_conv_algorithm(g, Direction::backward_input, kBuildIsa);
  // The transposed forward also multiplies the zeros it pads dy with by the weights: with an
  // infinite or NaN weight those products are NaN where dx's sum has no such term. col2im
  // multiplies real dy values only.
  if (a == Algorithm::backward_input_as_forward && !all_finite(w, g.w_size()))
    a = g.channels_last ? Algorithm::col2im_nhwc : Algorithm::col2im_nchw;
  switch (a) {
    case Algorithm::backward_input_as_forward:
      return backward_input_as_forward(g, dy, w, dx);
    case Algorithm::col2im_nchw:
      return backward_input_col2im_nchw(g, dy, w, dx);
    case Algorithm::col2im_nhwc:
      return backward_input_col2im_nhwc(g, dy, w, dx);
    case Algorithm::direct_nhwc:
      return conv2d_direct_backward_input(g, dy, w, dx);
    case Algorithm::depthwise_nchw:
    case Algorithm::depthwise_nhwc:
      return depthwise_conv2d_backward_input(g, dy, w, dx);
    default:
      wrong_algorithm(a, "input gradient");
  }
}

void conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  backward_weight_by(select_conv_algorithm(g, Direction::backward_weight, kBuildIsa), g, dy, x, dw,
                     nullptr);
}

void conv2d_backward(const ConvGeometry& g, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* dbias) {
  if (dx &&
      select_conv_algorithm(g, Direction::backward_input, kBuildIsa) == Algorithm::depthwise_nhwc &&
      depthwise_conv2d_backward(g, dy, x, w, dx, dw, dbias))
    return;
  if (dx) conv2d_backward_input(g, dy, w, dx);
  std::optional<BiasSums> bias;
  if (dbias) bias.emplace(num_threads(), g.c_out);
  if (backward_weight_by(select_conv_algorithm(g, Direction::backward_weight, kBuildIsa), g, dy, x,
                         dw, bias ? &*bias : nullptr))
    return bias->finish(dbias);
  if (dbias) bias_backward(g, dy, dbias);
}

void bias_backward(const ConvGeometry& g, const float* dy, float* dbias) {
  const int64_t P = g.oh * g.ow, C = g.c_out;
  if (!g.channels_last) {
    parallel_for(C, [&](int64_t c) {
      double total = 0.0;
      for (int64_t b = 0; b < g.n; ++b) {
        const float* plane = dy + (b * C + c) * P;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t p = 0; p < P; ++p) s += plane[p];
        total += s;
      }
      dbias[c] = static_cast<float>(total);
    });
    return;
  }
  const int threads = num_threads();
  BiasSums sums(threads, C);
  parallel_threads(threads, [&](int t, int team) {
    int64_t begin, end;
    split_range(g.n * P, team, t, begin, end);
    for (int64_t p = begin; p < end; p += P)  // image-sized blocks
      sums.add_block(t, dy + p * C, std::min(end - p, P), C);
  });
  sums.finish(dbias);
}

}  // namespace fastconv::cpu::FASTCONV_ISA
