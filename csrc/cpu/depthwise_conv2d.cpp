// Depthwise 2-D convolution on the CPU: one filter per (input channel, multiplier) pair.
//
// C input channels, M = C_out / C depth multiplier; output channel o reads input channel
// o / M with weights w[o, 0, KH, KW]. There is no reduction over channels, so with small
// kernels the work is memory-bound: NCHW loops run along a row (contiguous for stride 1),
// NHWC loops run along the channels of a pixel, and write large outputs with streaming
// stores (streams_output). Large kernels (5x5, 7x7) make it compute-bound: the NHWC forward
// keeps a tile of pixels x channels in registers, so that a tap's weights serve several
// pixels.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/frame.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/lanes.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// Visits each in-bounds (output row, input row) pair of tap row ky, and within it each
// (kx, [ox_lo, ox_hi), first input column) so that input column = first + (ox-ox_lo)*stride.
template <class Visit>
inline void for_valid_taps(const ConvGeometry& g, int64_t oy, Visit&& visit) {
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = g.in_row(oy, ky);
    if (iy < 0 || iy >= g.h) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      int64_t lo, hi;
      valid_outputs(g.ow, g.w, g.stride_w, kx * g.dil_w - g.pad_left, lo, hi);
      if (lo < hi) visit(ky, kx, iy, lo, hi, g.in_col(lo, kx));
    }
  }
}

// Weights as (KH*KW, ld >= C_out), zero past C_out: a tap's weights for consecutive
// channels are contiguous.
std::vector<float> tap_major(const ConvGeometry& g, const float* w, int64_t ld) {
  const int64_t taps = g.kh * g.kw;
  std::vector<float> out(taps * ld, 0.f);
  for (int64_t o = 0; o < g.c_out; ++o)
    for (int64_t t = 0; t < taps; ++t) out[t * ld + o] = w[o * taps + t];
  return out;
}

void forward_nchw(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                  float* y) {
  const int64_t mult = g.c_out / g.c_in, taps = g.kh * g.kw;
  parallel_for(g.n * g.c_out, [&](int64_t plane) {
    const int64_t o = plane % g.c_out, b = plane / g.c_out;
    const float* in = x + (b * g.c_in + o / mult) * g.h * g.w;
    const float* wo = w + o * taps;
    for (int64_t oy = 0; oy < g.oh; ++oy) {
      float* out = y + (plane * g.oh + oy) * g.ow;
      std::fill(out, out + g.ow, bias ? bias[o] : 0.f);
      for_valid_taps(g, oy,
                     [&](int64_t ky, int64_t kx, int64_t iy, int64_t lo, int64_t hi, int64_t ix) {
                       const float wv = wo[ky * g.kw + kx];
                       const float* row = in + iy * g.w + ix - lo * g.stride_w;
                       for (int64_t ox = lo; ox < hi; ++ox) out[ox] += wv * row[ox * g.stride_w];
                     });
    }
  });
}

// One filter per channel (M = 1), NHWC: a register tile of P output pixels along a row x
// NV vectors of channels sums its windows tap by tap, each tap's weights loaded once for
// the P pixels. The windows are read in a frame (frame.h), so a tile has no bounds to
// check. x points at the row's first window at the block's first channel; w (ld floats per
// tap) and bias are padded with zeros to whole vectors; the block's last vector holds
// `tail` channels (kTail: fewer than a vector).
struct ChannelRow {
  const float* x;
  int64_t step;
  const int64_t* tap_offset;
  int64_t taps;
  const float* w;
  int64_t ld;
  const float* bias;
  float* out;
  int64_t out_ld;
  int tail;
};

// The tiles unroll every loop over their registers, so that GCC keeps them in registers.
template <int P, int NV, bool kTail, bool kStream>
void channel_tile(const ChannelRow& t) {
  using V = Simd::V;
  constexpr int64_t L = Simd::kLanes;
  const auto load_x = [&](const float* p, int v) {
    return kTail && v == NV - 1 ? Simd::load_part(p, t.tail) : Simd::load(p);
  };
  V acc[P][NV];
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) acc[p][v] = Simd::load(t.bias + v * L);
  for (int64_t k = 0; k < t.taps; ++k) {
    const float* xk = t.x + t.tap_offset[k];
    V wk[NV];
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) wk[v] = Simd::load(t.w + k * t.ld + v * L);
#pragma GCC unroll 32
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 32
      for (int v = 0; v < NV; ++v)
        acc[p][v] = Simd::fma(load_x(xk + p * t.step + v * L, v), wk[v], acc[p][v]);
  }
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) {
      float* out = t.out + p * t.out_ld + v * L;
      if (kTail && v == NV - 1)
        Simd::store_part(out, acc[p][v], t.tail);
      else
        store_out<kStream>(out, acc[p][v]);
    }
}

// `count` pixels in tiles of P, then of fewer.
template <int P, int NV, bool kTail, bool kStream>
void channel_run(const ChannelRow& t, int64_t count) {
  in_halving_tiles<P>(count, [&](auto n, int64_t first) {
    ChannelRow at = t;
    at.x += first * t.step;
    at.out += first * t.out_ld;
    channel_tile<decltype(n)::value, NV, kTail, kStream>(at);
  });
}

template <int NV, bool kStream>
void channel_block(const ChannelRow& t, int64_t count) {
  if (t.tail == Simd::kLanes)
    channel_run<kTileRegisters / NV, NV, false, kStream>(t, count);
  else
    channel_run<kTileRegisters / NV, NV, true, kStream>(t, count);
}

// A row of `count` output pixels, all `channels` channels, in blocks of kTileVectors vectors.
template <bool kStream>
void channel_row(const ChannelRow& t, int64_t count, int64_t channels) {
  constexpr int64_t L = Simd::kLanes;
  for (int64_t c0 = 0; c0 < channels; c0 += kTileVectors * L) {
    const int64_t width = std::min(kTileVectors * L, channels - c0), vectors = (width + L - 1) / L;
    const ChannelRow block{
        t.x + c0, t.step,      t.tap_offset, t.taps,   t.w + c0,
        t.ld,     t.bias + c0, t.out + c0,   t.out_ld, static_cast<int>(width - (vectors - 1) * L)};
    with_tile_vectors(vectors,
                      [&](auto nv) { channel_block<decltype(nv)::value, kStream>(block, count); });
  }
}

// Output rows per parallel item, an item being a band of rows of one image: few enough that
// a padded frame stays in L2 (256 KiB), and enough items for the threads.
int64_t band_rows(const ConvGeometry& g, const Frame& f) {
  const int64_t band = std::clamp<int64_t>(g.n * g.oh / (8 * num_threads()), 1, g.oh);
  if (!f.copies) return band;
  const int64_t rows = (int64_t{256} << 10) / (4 * f.cols * f.c) - (g.kh - 1) * g.dil_h;
  return std::clamp<int64_t>((rows - 1) / g.stride_h + 1, 1, band);
}

void forward_nhwc(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                  float* y) {
  const Frame f(g);
  const int64_t taps = g.kh * g.kw, ld = round_up(g.c_out, Simd::kLanes);
  const std::vector<float> wt = tap_major(g, w, ld);
  std::vector<float> b(ld, 0.f);
  if (bias) std::copy(bias, bias + g.c_out, b.begin());
  const int64_t band = band_rows(g, f), bands = (g.oh + band - 1) / band;
  const bool stream = g.c_out % Simd::kLanes == 0 && streams_output(g.y_size());
  with_streaming(stream, [&](auto streamed) {
    parallel_for(g.n * bands, [&](int64_t item) {
      const int64_t n = item / bands, oy0 = item % bands * band, oy1 = std::min(g.oh, oy0 + band);
      thread_local Buffer buf;
      const float* frame = frame_band(g, f, x, n, oy0, oy1, buf);
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        const ChannelRow row{frame + (oy - oy0) * f.window_row(g),
                             f.step,
                             f.tap_offset.data(),
                             taps,
                             wt.data(),
                             ld,
                             b.data(),
                             y + (n * g.oh + oy) * g.ow * g.c_out,
                             g.c_out,
                             Simd::kLanes};
        channel_row<decltype(streamed)::value>(row, g.ow, g.c_out);
      }
      if (decltype(streamed)::value) stream_fence();
    });
  });
}

// dx plane of input channel c is the scatter of its M output planes; one item per plane.
void backward_input_nchw(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const int64_t mult = g.c_out / g.c_in, taps = g.kh * g.kw;
  parallel_for(g.n * g.c_in, [&](int64_t plane) {
    const int64_t c = plane % g.c_in, b = plane / g.c_in;
    float* out = dx + plane * g.h * g.w;
    std::fill(out, out + g.h * g.w, 0.f);
    for (int64_t m = 0; m < mult; ++m) {
      const int64_t o = c * mult + m;
      const float* grad = dy + (b * g.c_out + o) * g.oh * g.ow;
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        const float* grow = grad + oy * g.ow;
        for_valid_taps(g, oy,
                       [&](int64_t ky, int64_t kx, int64_t iy, int64_t lo, int64_t hi, int64_t ix) {
                         const float wv = w[o * taps + ky * g.kw + kx];
                         float* row = out + iy * g.w + ix - lo * g.stride_w;
                         for (int64_t ox = lo; ox < hi; ++ox) row[ox * g.stride_w] += wv * grow[ox];
                       });
      }
    }
  });
}

// out[c, c + group width) = bias + sum over the n taps of in[t][c..] * w[t][c..], the
// group's K registers accumulating in place.
template <bool kStream, class V, int K>
[[gnu::always_inline]] inline void window_sum(LaneGroup<V, K> lanes, int64_t n,
                                              const float* const* in, const float* const* w,
                                              const float* bias, int64_t c, float* out) {
  V acc[K];
  for (int k = 0; k < K; ++k) acc[k] = bias ? load<V>(bias + c + k * lanes.kStep) : V{};
  for (int64_t t = 0; t < n; ++t)
    for (int k = 0; k < K; ++k)
      acc[k] += load<V>(in[t] + c + k * lanes.kStep) * load<V>(w[t] + c + k * lanes.kStep);
  for (int k = 0; k < K; ++k) store_out<kStream>(out + c + k * lanes.kStep, acc[k]);
}

// Stride 1, M = 1, NHWC: dx is the forward of dy with each filter flipped, padded so that the
// output has the input's size. Not where that padding would be negative, nor with a weight
// that is not finite: the padding's zeros times it would make NaN where dx's sum has no such
// term.
bool transposes_as_forward(const ConvGeometry& g, const float* w) {
  return g.stride_h == 1 && g.stride_w == 1 && g.c_out == g.c_in &&
         g.dil_h * (g.kh - 1) >= g.pad_top && g.dil_w * (g.kw - 1) >= g.pad_left &&
         all_finite(w, g.w_size());
}

// That forward's geometry: dy in, dx out.
ConvGeometry transposed(const ConvGeometry& g) {
  ConvGeometry t = g;
  t.h = g.oh;
  t.w = g.ow;
  t.oh = g.h;
  t.ow = g.w;
  t.pad_top = g.dil_h * (g.kh - 1) - g.pad_top;
  t.pad_left = g.dil_w * (g.kw - 1) - g.pad_left;
  return t;
}

std::vector<float> flipped(const ConvGeometry& g, const float* w) {
  const int64_t taps = g.kh * g.kw;
  std::vector<float> out(g.w_size());
  for (int64_t c = 0; c < g.c_out; ++c)
    for (int64_t t = 0; t < taps; ++t) out[c * taps + taps - 1 - t] = w[c * taps + t];
  return out;
}

// dx by the tiles of the forward; returns whether it ran.
bool backward_input_as_forward(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  if (!transposes_as_forward(g, w)) return false;
  forward_nhwc(transposed(g), dy, flipped(g, w).data(), nullptr, dx);
  return true;
}

// dx, dw and dbias in one pass over dy and x (stride 1, M = 1, NHWC), where the separate
// passes read dy three times. dx is the transposed forward above; tap k of dx pixel q's
// window holds the dy value that the forward's tap K - 1 - k paired with x[q], so the same
// loaded value adds x[q] * dy to dw's sum for that tap (the frame's zeros add nothing).
struct GradientRow {
  const float* window;  // the frame window of the row's first dx pixel
  int64_t step;         // floats between neighbouring windows
  const int64_t* tap_offset;
  int64_t taps;
  const float* w;  // flipped filters, tap-major, ld floats per tap
  int64_t ld;
  const float* x;  // the row's first pixel; dx likewise
  float* dx;
  float* dw;  // the band's float sums, tap-major like w
  int64_t c;
};

// Pixels ahead of a tile whose x is prefetched.
constexpr int kPrefetchPixels = 8;

// P pixels from `first` x the channel vector at c (`tail` channels with kTail). dw's sums
// for a tap take the P products in two chains, then go through memory once per tile.
template <int P, bool kTail, bool kStream>
void gradient_tile(const GradientRow& r, int64_t first, int64_t c, int tail) {
  using V = Simd::V;
  const auto load = [&](const float* p) {
    return kTail ? Simd::load_part(p, tail) : Simd::load(p);
  };
  const float* x = r.x + first * r.c + c;
  const float* window = r.window + first * r.step + c;
  V xq[P], acc[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    xq[p] = load(x + p * r.c);
    acc[p] = Simd::zero();
    // A tile reads one vector of each pixel's C channels: a stride through memory that the
    // hardware prefetchers do not run far enough ahead of.
    __builtin_prefetch(x + (kPrefetchPixels + p) * r.c);
  }
  for (int64_t k = 0; k < r.taps; ++k) {
    const V wk = Simd::load(r.w + k * r.ld + c);
    const float* tap = window + r.tap_offset[k];
    V sums[2] = {Simd::zero(), Simd::zero()};
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const V d = load(tap + p * r.step);
      acc[p] = Simd::fma(d, wk, acc[p]);
      sums[p % 2] = Simd::fma(xq[p], d, sums[p % 2]);
    }
    float* s = r.dw + k * r.ld + c;
    Simd::store(s, Simd::add(Simd::load(s), Simd::add(sums[0], sums[1])));
  }
  float* dx = r.dx + first * r.c + c;
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    if (kTail)
      Simd::store_part(dx + p * r.c, acc[p], tail);
    else
      store_out<kStream>(dx + p * r.c, acc[p]);
  }
}

template <bool kStream>
void gradient_row(const GradientRow& r, int64_t cols) {
  constexpr int64_t L = Simd::kLanes;
  in_halving_tiles<kTileRegisters / 3>(cols, [&](auto n, int64_t first) {
    constexpr int P = decltype(n)::value;
    int64_t c = 0;
    for (; c + L <= r.c; c += L) gradient_tile<P, false, kStream>(r, first, c, L);
    if (c < r.c) gradient_tile<P, true, kStream>(r, first, c, static_cast<int>(r.c - c));
  });
}

// sums[0, C) += the channels of `pixels` consecutive NHWC pixels from p.
void add_pixels(const float* p, int64_t pixels, int64_t channels, float* sums) {
  constexpr int64_t L = Simd::kLanes;
  for (int64_t c = 0; c < channels; c += L) {
    const int lanes = static_cast<int>(std::min(L, channels - c));
    Simd::V s = Simd::load(sums + c);
    if (lanes == L)
      for (int64_t i = 0; i < pixels; ++i) s = Simd::add(s, Simd::load(p + i * channels + c));
    else  // a part of a vector, which AVX2 loads through memory
      for (int64_t i = 0; i < pixels; ++i)
        s = Simd::add(s, Simd::load_part(p + i * channels + c, lanes));
    Simd::store(sums + c, s);
  }
}

// Bands of dx rows as in forward_nhwc, split evenly over the threads, each with its own
// double sums of dw (taps x ld) and dbias (ld), reduced in thread order.
void backward_nhwc(const ConvGeometry& g, const float* dy, const float* x, const float* w,
                   float* dx, float* dw, float* dbias) {
  const ConvGeometry t = transposed(g);
  const Frame f(t);
  const int64_t taps = g.kh * g.kw, ld = round_up(g.c_in, Simd::kLanes), size = (taps + 1) * ld;
  const std::vector<float> wt = tap_major(g, flipped(g, w).data(), ld);
  const int64_t band = band_rows(t, f), bands = (g.h + band - 1) / band, items = g.n * bands;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), items));
  std::vector<std::vector<double>> partial(threads, std::vector<double>(size, 0.0));
  const bool stream = g.c_in % Simd::kLanes == 0 && streams_output(g.x_size());
  parallel_threads(threads, [&](int th, int team) {
    thread_local Buffer buf;
    std::vector<float> sums(size);
    with_streaming(stream, [&](auto streamed) {
      for (int64_t item = items * th / team; item < items * (th + 1) / team; ++item) {
        const int64_t n = item / bands, iy0 = item % bands * band, iy1 = std::min(g.h, iy0 + band);
        const float* frame = frame_band(t, f, dy, n, iy0, iy1, buf);
        std::fill(sums.begin(), sums.end(), 0.f);
        for (int64_t iy = iy0; iy < iy1; ++iy) {
          const int64_t pixel = (n * g.h + iy) * g.w * g.c_in;
          const GradientRow row{frame + (iy - iy0) * f.window_row(t),
                                f.step,
                                f.tap_offset.data(),
                                taps,
                                wt.data(),
                                ld,
                                x + pixel,
                                dx + pixel,
                                sums.data(),
                                g.c_in};
          gradient_row<decltype(streamed)::value>(row, g.w);
        }
        // The band's own dy rows (oh <= h here), which its frame has just read.
        const int64_t r0 = std::min(iy0, g.oh), r1 = iy1 == g.h ? g.oh : std::min(iy1, g.oh);
        if (dbias)
          add_pixels(dy + (n * g.oh + r0) * g.ow * g.c_out, (r1 - r0) * g.ow, g.c_out,
                     sums.data() + taps * ld);
        for (int64_t i = 0; i < size; ++i) partial[th][i] += sums[i];
      }
      if (decltype(streamed)::value) stream_fence();
    });
  });
  for (int64_t c = 0; c < g.c_in; ++c)
    for (int64_t k = 0; k <= taps; ++k) {
      double total = 0.0;
      for (int th = 0; th < threads; ++th) total += partial[th][k * ld + c];
      if (k < taps)
        dw[c * taps + taps - 1 - k] = static_cast<float>(total);
      else if (dbias)
        dbias[c] = static_cast<float>(total);
    }
}

// NHWC dx by gathering (M = 1): input pixel (iy, ix) collects every output whose window
// covers it, so rows are independent and can run in parallel; each lane group of channels
// sums them in registers.
void backward_input_nhwc(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const int64_t taps = g.kh * g.kw;
  const std::vector<float> wt = tap_major(g, w, g.c_out);
  with_streaming(streams_output(g.n * g.h * g.w * g.c_in), [&](auto streamed) {
    parallel_for(g.n * g.h, [&](int64_t row) {
      const int64_t b = row / g.h, iy = row % g.h;
      std::vector<const float*> grad(taps), wv(taps);  // the outputs reaching a pixel, weights
      for (int64_t ix = 0; ix < g.w; ++ix) {
        int64_t n = 0;
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t oy = g.out_row(iy, ky);
          for (int64_t kx = 0; kx < g.kw && oy >= 0; ++kx) {
            const int64_t ox = g.out_col(ix, kx);
            if (ox < 0) continue;
            grad[n] = dy + ((b * g.oh + oy) * g.ow + ox) * g.c_out;
            wv[n++] = wt.data() + (ky * g.kw + kx) * g.c_out;
          }
        }
        float* out = dx + ((b * g.h + iy) * g.w + ix) * g.c_in;
        for_lane_groups(g.c_in, [&](auto lanes, int64_t c) {
          window_sum<decltype(streamed)::value>(lanes, n, grad.data(), wv.data(), nullptr, c, out);
        });
      }
      if (decltype(streamed)::value) stream_fence();
    });
  });
}

void backward_weight_nchw(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  const int64_t mult = g.c_out / g.c_in, taps = g.kh * g.kw;
  parallel_for(g.c_out, [&](int64_t o) {
    std::vector<double> total(taps, 0.0);
    for (int64_t b = 0; b < g.n; ++b) {
      const float* in = x + (b * g.c_in + o / mult) * g.h * g.w;
      const float* grad = dy + (b * g.c_out + o) * g.oh * g.ow;
      std::vector<float> sums(taps, 0.f);
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        const float* grow = grad + oy * g.ow;
        for_valid_taps(g, oy,
                       [&](int64_t ky, int64_t kx, int64_t iy, int64_t lo, int64_t hi, int64_t ix) {
                         const float* row = in + iy * g.w + ix - lo * g.stride_w;
                         float s = 0.f;
#pragma omp simd reduction(+ : s)
                         for (int64_t ox = lo; ox < hi; ++ox) s += grow[ox] * row[ox * g.stride_w];
                         sums[ky * g.kw + kx] += s;
                       });
      }
      for (int64_t t = 0; t < taps; ++t) total[t] += sums[t];
    }
    for (int64_t t = 0; t < taps; ++t) dw[o * taps + t] = static_cast<float>(total[t]);
  });
}

// s[0, group width) += sum over i < n of a[i * a_step + ..] * b[i * b_step + ..], the sums
// held in the group's K registers.
template <class V, int K>
inline void row_dot(LaneGroup<V, K> lanes, int64_t n, const float* a, int64_t a_step,
                    const float* b, int64_t b_step, float* s) {
  V acc[K] = {};
  for (int64_t i = 0; i < n; ++i, a += a_step, b += b_step)
    for (int k = 0; k < K; ++k)
      acc[k] += load<V>(a + k * lanes.kStep) * load<V>(b + k * lanes.kStep);
  for (int k = 0; k < K; ++k) store(s + k * lanes.kStep, load<V>(s + k * lanes.kStep) + acc[k]);
}

// NHWC weight gradient, one output row at a time: for each tap, each lane group of
// channels sums the row's products in registers before adding them to the row's sums.
void backward_weight_nhwc(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  const int64_t taps = g.kh * g.kw, rows = g.n * g.oh;
  const int threads = num_threads();
  // Per-thread partial sums (KH*KW, C_out), reduced in thread order.
  std::vector<std::vector<double>> partial(threads, std::vector<double>(taps * g.c_out, 0.0));
  parallel_threads(threads, [&](int t, int team) {
    std::vector<float> sums(taps * g.c_out);
    for (int64_t row = rows * t / team; row < rows * (t + 1) / team; ++row) {
      const int64_t b = row / g.oh, oy = row % g.oh;
      std::fill(sums.begin(), sums.end(), 0.f);
      for_valid_taps(
          g, oy, [&](int64_t ky, int64_t kx, int64_t iy, int64_t lo, int64_t hi, int64_t ix) {
            float* s = sums.data() + (ky * g.kw + kx) * g.c_out;
            const float* grad = dy + ((b * g.oh + oy) * g.ow + lo) * g.c_out;
            const float* px = x + ((b * g.h + iy) * g.w + ix) * g.c_in;
            for_lane_groups(g.c_out, [&](auto lanes, int64_t c) {
              row_dot(lanes, hi - lo, grad + c, g.c_out, px + c, g.stride_w * g.c_in, s + c);
            });
          });
      for (int64_t i = 0; i < taps * g.c_out; ++i) partial[t][i] += sums[i];
    }
  });
  for (int64_t o = 0; o < g.c_out; ++o)
    for (int64_t k = 0; k < taps; ++k) {
      double total = 0.0;
      for (int t = 0; t < threads; ++t) total += partial[t][k * g.c_out + o];
      dw[o * taps + k] = static_cast<float>(total);
    }
}

// NHWC with a depth multiplier M > 1 is the M = 1 layer over x with each channel repeated M
// times (output channel c * M + m reads input channel c), so the M = 1 kernels serve it:
// the forward and the weight gradient read the repeated x, and dx sums each channel's M
// gradients of the repeated one.
ConvGeometry repeated(const ConvGeometry& g) {
  ConvGeometry e = g;
  e.c_in = e.groups = g.c_out;
  return e;
}

// x (pixels x C) with each channel repeated M times, in a buffer of the calling thread.
const float* repeat_channels(const ConvGeometry& g, const float* x) {
  const int64_t mult = g.c_out / g.c_in, pixels = g.n * g.h * g.w;
  thread_local Buffer out;
  out.resize(pixels * g.c_out);
  float* o = out.data();
  parallel_runs(pixels, 256, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t c = 0; c < g.c_in; ++c)
        std::fill_n(o + (p * g.c_in + c) * mult, mult, x[p * g.c_in + c]);
  });
  return out.data();
}

void input_gradient_nhwc(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  if (!backward_input_as_forward(g, dy, w, dx)) backward_input_nhwc(g, dy, w, dx);
}

}  // namespace

void depthwise_conv2d_forward(const ConvGeometry& g, const float* x, const float* w,
                              const float* bias, float* y) {
  if (!g.channels_last)
    forward_nchw(g, x, w, bias, y);
  else if (g.c_out == g.c_in)
    forward_nhwc(g, x, w, bias, y);
  else
    forward_nhwc(repeated(g), repeat_channels(g, x), w, bias, y);
}

void depthwise_conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w,
                                     float* dx) {
  if (!g.channels_last) return backward_input_nchw(g, dy, w, dx);
  if (g.c_out == g.c_in) return input_gradient_nhwc(g, dy, w, dx);
  const int64_t mult = g.c_out / g.c_in, pixels = g.n * g.h * g.w;
  thread_local Buffer each;  // dx of the repeated x: (pixels x C * M)
  each.resize(pixels * g.c_out);
  input_gradient_nhwc(repeated(g), dy, w, each.data());
  const float* e = each.data();
  parallel_runs(pixels, 256, [&](int64_t p0, int64_t p1) {
    for (int64_t i = p0 * g.c_in; i < p1 * g.c_in; ++i) {
      float sum = e[i * mult];
      for (int64_t m = 1; m < mult; ++m) sum += e[i * mult + m];
      dx[i] = sum;
    }
  });
}

bool depthwise_conv2d_backward(const ConvGeometry& g, const float* dy, const float* x,
                               const float* w, float* dx, float* dw, float* dbias) {
  if (!g.channels_last || !transposes_as_forward(g, w)) return false;
  backward_nhwc(g, dy, x, w, dx, dw, dbias);
  // A non-finite x at the border meets the frame's zeros (NaN) where dw's sum has no term.
  if (!all_finite(dw, g.w_size())) backward_weight_nhwc(g, dy, x, dw);
  return true;
}

void depthwise_conv2d_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                      float* dw) {
  if (!g.channels_last)
    backward_weight_nchw(g, dy, x, dw);
  else if (g.c_out == g.c_in)
    backward_weight_nhwc(g, dy, x, dw);
  else
    backward_weight_nhwc(repeated(g), dy, repeat_channels(g, x), dw);
}

}  // namespace fastconv::cpu::FASTCONV_ISA
