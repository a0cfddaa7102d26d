// Direct NHWC convolution for layers with few input channels, such as a network's first
// layer over RGB: the GEMMs of conv2d.cpp would run at a depth of C_in * taps (12 for a 2x2
// kernel) with tiles mostly empty. Here a register tile holds output pixels x vectors of
// output channels, and each step adds one broadcast value times a vector of weights, so the
// work runs along C_out, which such a layer has plenty of. With k = (ky, kx, ci):
//
//   forward   y[pixel, :]    = bias + sum_k window(pixel)[k] * W[k, :]
//   dx        dcol[pixel, :] = sum_o dy[pixel, o] * W[:, o], added into window(pixel)
//             (at stride 1, gathered by each dx row instead)
//   dW        dW[k, :]      += window(pixel)[k] * dy[pixel, :], summed over the pixels
//
// The windows are read in a frame (frame.h): the image with the layer's padding made real (a copy
// when the layer pads), so that every window lies inside it and tap k of a window sits a
// fixed offset[k] floats after the window's first element.
#include "cpu/conv2d_direct.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "cpu/frame.h"
#include "cpu/gemm.h"
#include "cpu/lanes.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// Offsets of the taps k = (ky, kx, ci) from a window's first element.
std::vector<int64_t> tap_channel_offsets(const Frame& f) {
  std::vector<int64_t> offset;
  for (const int64_t tap : f.tap_offset)
    for (int64_t ci = 0; ci < f.c; ++ci) offset.push_back(tap + ci);
  return offset;
}

// Dot products along a depth for a row of pixels: pixel p's value at depth j is
// a[p * a_step + offset[j]], B holds `depth` rows of b_ld floats (whole vectors, zero past
// the last column), and pixel p's `width` results go to out + p * out_ld, starting from
// init (whole vectors) or zero.
struct PixelRow {
  int64_t depth;
  const float* a;
  int64_t a_step;
  const int64_t* offset;
  const float* b;
  int64_t b_ld;
  const float* init;
  float* out;
  int64_t out_ld, width;
};

// The tiles unroll every loop over their registers: without that GCC kept a copy of the
// accumulators on the stack, a store per register per tile. With kStream, whole vectors go
// out as streaming stores (a large output is then not read from memory before it is written).
template <class S, bool kStream, int P, int NV>
void pixel_tile(const PixelRow& t) {
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  V acc[P][NV];
#pragma GCC unroll 32
  for (int v = 0; v < NV; ++v) {
    const V start = t.init ? S::load(t.init + v * L) : S::zero();
#pragma GCC unroll 32
    for (int p = 0; p < P; ++p) acc[p][v] = start;
  }
  for (int64_t j = 0; j < t.depth; ++j) {
    V w[NV];
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) w[v] = S::load(t.b + j * t.b_ld + v * L);
    const float* a = t.a + t.offset[j];
#pragma GCC unroll 32
    for (int p = 0; p < P; ++p) {
      const V s = S::splat(a[p * t.a_step]);
#pragma GCC unroll 32
      for (int v = 0; v < NV; ++v) acc[p][v] = S::fma(s, w[v], acc[p][v]);
    }
  }
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) {
      const int64_t left = t.width - v * L;
      if (left >= L)
        store_out<kStream>(t.out + p * t.out_ld + v * L, acc[p][v]);
      else
        S::store_part(t.out + p * t.out_ld + v * L, acc[p][v], static_cast<int>(left));
    }
}

// `count` pixels in tiles of P, then of fewer.
template <class S, bool kStream, int P, int NV>
void pixel_run(const PixelRow& t, int64_t count) {
  in_halving_tiles<P>(count, [&](auto n, int64_t first) {
    PixelRow at = t;
    at.a += first * t.a_step;
    at.out += first * t.out_ld;
    pixel_tile<S, kStream, decltype(n)::value, NV>(at);
  });
}

// All `columns` results of `count` pixels, in blocks of up to kTileVectors vectors.
template <class S, bool kStream = false>
void pixel_row(PixelRow t, int64_t count, int64_t columns) {
  constexpr int64_t L = S::kLanes;
  for (int64_t c0 = 0; c0 < columns; c0 += kTileVectors * L) {
    PixelRow block = t;
    block.b += c0;
    block.init = t.init ? t.init + c0 : nullptr;
    block.out += c0;
    block.width = std::min(kTileVectors * L, columns - c0);
    with_tile_vectors((block.width + L - 1) / L, [&](auto vectors) {
      constexpr int NV = decltype(vectors)::value;
      pixel_run<S, kStream, kTileRegisters / NV, NV>(block, count);
    });
  }
}

// Sums over the pixels of an output row for the weight gradient: tap r's value at pixel p
// is a[p * a_step + offset[r]], pixel p's gradient row is at b + p * b_ld (whole vectors
// readable), and tap r's sums are at acc + r * acc_ld (whole vectors).
struct GradientRow {
  int64_t pixels;
  const float* a;
  int64_t a_step;
  const int64_t* offset;
  const float* b;
  int64_t b_ld;
  float* acc;
  int64_t acc_ld;
};

template <class S, int R, int NV>
void gradient_tile(const GradientRow& t) {
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  V sum[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) sum[r][v] = S::load(t.acc + r * t.acc_ld + v * L);
  for (int64_t p = 0; p < t.pixels; ++p) {
    V d[NV];
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) d[v] = S::load(t.b + p * t.b_ld + v * L);
    const float* a = t.a + p * t.a_step;
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const V s = S::splat(a[t.offset[r]]);
#pragma GCC unroll 32
      for (int v = 0; v < NV; ++v) sum[r][v] = S::fma(s, d[v], sum[r][v]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) S::store(t.acc + r * t.acc_ld + v * L, sum[r][v]);
}

// `taps` taps in tiles of R, then of fewer.
template <class S, int R, int NV>
void gradient_run(const GradientRow& t, int64_t taps) {
  in_halving_tiles<R>(taps, [&](auto n, int64_t first) {
    GradientRow at = t;
    at.offset += first;
    at.acc += first * t.acc_ld;
    gradient_tile<S, decltype(n)::value, NV>(at);
  });
}

// Every tap's sums over `columns` (a whole number of vectors) output channels.
template <class S>
void gradient_row(GradientRow t, int64_t taps, int64_t columns) {
  constexpr int64_t L = S::kLanes;
  for (int64_t c0 = 0; c0 < columns; c0 += kTileVectors * L) {
    GradientRow block = t;
    block.b += c0;
    block.acc += c0;
    with_tile_vectors((columns - c0) / L, [&](auto vectors) {
      constexpr int NV = decltype(vectors)::value;
      gradient_run<S, kTileRegisters / NV, NV>(block, taps);
    });
  }
}

// to[0, n) += from[0, n) in whole vectors, the rest masked where masks are cheap (AVX-512):
// a kernel row's taps are a few vectors long at most.
inline void add_into(float* __restrict to, const float* __restrict from, int64_t n) {
  constexpr int64_t L = Simd::kLanes;
  int64_t i = 0;
  for (; i + L <= n; i += L)
    Simd::store(to + i, Simd::add(Simd::load(to + i), Simd::load(from + i)));
#if defined(__AVX512F__)
  if (const int rest = static_cast<int>(n - i))
    Simd::store_part(
        to + i, Simd::add(Simd::load_part(to + i, rest), Simd::load_part(from + i, rest)), rest);
#else
  for (; i < n; ++i) to[i] += from[i];
#endif
}

// Output rows per work item: whole images when there are enough of them for the threads.
int64_t band_rows(const ConvGeometry& g) {
  return std::clamp<int64_t>(g.n * g.oh / (8 * num_threads()), 1, g.oh);
}

// w (C_out, C_in, KH, KW) as rows k = (ky, kx, ci) of `ld` floats, column o (transposed:
// rows o of `ld` floats, column k), zero past the last column.
std::vector<float> weights_by_tap(const ConvGeometry& g, const float* w, int64_t ld,
                                  bool transposed) {
  const int64_t taps = g.c_in * g.kh * g.kw;
  std::vector<float> out((transposed ? g.c_out : taps) * ld, 0.f);
  for (int64_t o = 0; o < g.c_out; ++o)
    for (int64_t ci = 0; ci < g.c_in; ++ci)
      for (int64_t t = 0; t < g.kh * g.kw; ++t) {
        const int64_t k = t * g.c_in + ci;
        out[transposed ? o * ld + k : k * ld + o] = w[(o * g.c_in + ci) * g.kh * g.kw + t];
      }
  return out;
}

// f(S{}) for the vectors S that the kernels along C_out use: the build's widest, except that
// the AVX-512 build takes 256-bit vectors where C_out is not a multiple of 16. Then a pixel's
// outputs (and its dy row) start mid-line, and half the 64-byte accesses would split two
// cache lines; with C_out a multiple of 8, no 32-byte one does, and no lane is idle.
template <class F>
void with_output_vectors(int64_t c_out, F&& f) {
#if defined(__AVX512F__)
  if (c_out % Simd::kLanes != 0) return f(Simd256{});
#endif
  f(Simd{});
}

template <class S>
void forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  const Frame f(g);
  const std::vector<int64_t> offset = tap_channel_offsets(f);
  const int64_t ld = round_up(g.c_out, S::kLanes), band = band_rows(g),
                bands = (g.oh + band - 1) / band;
  const std::vector<float> weights = weights_by_tap(g, w, ld, false);
  std::vector<float> init(ld, 0.f);
  if (bias) std::copy(bias, bias + g.c_out, init.begin());
  // Streamed only where every pixel is whole cache lines: with 96-byte pixels (24 channels)
  // the streaming stores measured slower than plain ones.
  with_streaming(streams_lines(y, g.c_out, g.n * g.oh * g.ow * g.c_out), [&](auto streamed) {
    parallel_for(g.n * bands, [&](int64_t item) {
      const int64_t b = item / bands, oy0 = item % bands * band, oy1 = std::min(g.oh, oy0 + band);
      thread_local Buffer buf;
      const float* frame = frame_band(g, f, x, b, oy0, oy1, buf);
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        const PixelRow row{static_cast<int64_t>(offset.size()),
                           frame + (oy - oy0) * f.window_row(g),
                           f.step,
                           offset.data(),
                           weights.data(),
                           ld,
                           init.data(),
                           y + (b * g.oh + oy) * g.ow * g.c_out,
                           g.c_out,
                           0};
        pixel_row<S, decltype(streamed)::value>(row, g.ow, g.c_out);
      }
      if (streamed) stream_fence();
    });
  });
}

// The threads split the output rows, each summing a partial dW that is then reduced in a
// fixed order. A gradient row is read in whole vectors: past a pixel's C_out channels into
// the next pixel's (sums that are dropped), except at the end of dy, where it is copied.
template <class S>
void weight_gradient(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                     BiasSums* bias) {
  const Frame f(g);
  const std::vector<int64_t> offset = tap_channel_offsets(f);
  const int64_t taps = static_cast<int64_t>(offset.size()), ld = round_up(g.c_out, S::kLanes),
                rows = g.n * g.oh;
  const int64_t row_floats = g.ow * g.c_out, dy_floats = rows * row_floats;
  const int threads = num_threads();
  std::vector<Buffer>& partial = zeroed_partials(threads, taps * ld);
  parallel_threads(threads, [&](int t, int team) {
    const int64_t begin = rows * t / team, end = rows * (t + 1) / team;
    thread_local Buffer buf;
    thread_local std::vector<float> padded;
    for (int64_t r = begin; r < end;) {
      const int64_t b = r / g.oh, oy0 = r % g.oh, oy1 = std::min(g.oh, oy0 + end - r);
      const float* frame = frame_band(g, f, x, b, oy0, oy1, buf);
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        const int64_t start = (b * g.oh + oy) * row_floats;
        // The first of a row's tap tiles reads dy at about 20 bytes a cycle.
        if (start + 2 * row_floats <= dy_floats)
          prefetch_floats(dy + start + row_floats, row_floats);
        GradientRow row{g.ow,
                        frame + (oy - oy0) * f.window_row(g),
                        f.step,
                        offset.data(),
                        dy + start,
                        g.c_out,
                        partial[t].data(),
                        ld};
        if (start + row_floats + ld - g.c_out > dy_floats) {
          padded.assign(g.ow * ld, 0.f);
          for (int64_t p = 0; p < g.ow; ++p)
            std::copy_n(dy + start + p * g.c_out, g.c_out, padded.begin() + p * ld);
          row.b = padded.data();
          row.b_ld = ld;
        }
        gradient_row<S>(row, taps, ld);
      }
      if (bias) bias->add_block(t, dy + (b * g.oh + oy0) * row_floats, (oy1 - oy0) * g.ow, g.c_out);
      r += oy1 - oy0;
    }
  });
  reduce_partials(partial, partial[0].data(), taps * ld);
  const float* sum = partial[0].data();
  for (int64_t o = 0; o < g.c_out; ++o)
    for (int64_t ci = 0; ci < g.c_in; ++ci)
      for (int64_t t = 0; t < g.kh * g.kw; ++t)
        dw[(o * g.c_in + ci) * g.kh * g.kw + t] = sum[(t * g.c_in + ci) * ld + o];
}

// Stride 1, per image: dcol^T = W^T dy^T one output row at a time, a GEMM whose rows are the
// taps k = (ci, ky, kx) and whose columns the row's pixels, into rows d[k][oy] that carry zeros
// past both ends of the output row; then each input channel of a dx row sums its taps' rows,
// shifted, in whole vectors. The scatter below instead adds each window's taps into dx, and
// neighbouring windows overlap, so every add waits on the store of the one before.
void backward_input_by_gather(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  constexpr int64_t L = Simd::kLanes;
  const int64_t taps = g.c_in * g.kh * g.kw, kernel = g.kh * g.kw;
  const int64_t halo = (g.kw - 1) * g.dil_w, width = round_up(g.w, L);
  const int64_t row = round_up(halo + g.pad_left + width, L), plane = g.oh * row;
  const int64_t dy_row = g.ow * g.c_out;
  Buffer weights;  // W^T: rows k, columns o
  prepack(weights, w, 1, taps, taps, g.c_out, MR);
  const auto a_panel = [&](int64_t i0, int64_t, int64_t k0, int64_t) {
    return prepacked_panel(weights, g.c_out, MR, i0, k0);
  };
  // dx row iy of image b from the tap rows d: each channel's sums into `sums`, then
  // interleaved into the row's pixels.
  const auto gather_row = [&](const float* d, int64_t b, int64_t iy, float* sums) {
    for (int64_t ci = 0; ci < g.c_in; ++ci)
      for (int64_t v = 0; v < width; v += L) {
        Simd::V sum = Simd::zero();
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t oy = iy + g.pad_top - ky * g.dil_h;
          if (oy < 0 || oy >= g.oh) continue;
          const float* tap =
              d + (ci * kernel + ky * g.kw) * plane + oy * row + halo + g.pad_left + v;
          for (int64_t kx = 0; kx < g.kw; ++kx)
            sum = Simd::add(sum, Simd::load(tap + kx * (plane - g.dil_w)));
        }
        Simd::store(sums + ci * width + v, sum);
      }
    float* out = dx + (b * g.h + iy) * g.w * g.c_in;
    for (int64_t ix = 0; ix < g.w; ++ix)
      for (int64_t ci = 0; ci < g.c_in; ++ci) out[ix * g.c_in + ci] = sums[ci * width + ix];
  };
  parallel_threads(num_threads(), [&](int t, int team) {
    thread_local Buffer d, sums;
    d.assign(taps * plane, 0.f);  // the GEMMs leave the zeros past the row ends alone
    sums.resize(g.c_in * width);
    for (int64_t b = g.n * t / team; b < g.n * (t + 1) / team; ++b) {
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        const float* pixels = dy + (b * g.oh + oy) * dy_row;
        if (b + 1 < g.n || oy + 1 < g.oh) prefetch_floats(pixels + dy_row, dy_row);
        StridedPacker packer{pixels, g.c_out, 1, NR, &scratch_b()};
        gemm(taps, g.ow, g.c_out, a_panel, as_b(packer), d.data() + oy * row + halo, plane, false);
      }
      for (int64_t iy = 0; iy < g.h; ++iy) gather_row(d.data(), b, iy, sums.data());
    }
  });
}

}  // namespace

void conv2d_direct_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                           float* y) {
  with_output_vectors(g.c_out, [&](auto s) { forward<decltype(s)>(g, x, w, bias, y); });
}

// Per image: a row's dcol in a small buffer, then added into its windows in the frame, which
// is dx's image itself when the layer does not pad.
void conv2d_direct_backward_input(const ConvGeometry& g, const float* dy, const float* w,
                                  float* dx) {
  // At stride 1 the gather measured as fast as the scatter or faster on every layer tried
  // (1 to 15 input channels, 16 to 128 outputs, 2x2 to 7x7; 3x3 3->96: 21 % faster).
  if (g.stride_h == 1 && g.stride_w == 1) return backward_input_by_gather(g, dy, w, dx);
  const Frame f(g);
  const std::vector<int64_t> offset = tap_channel_offsets(f);
  const int64_t taps = static_cast<int64_t>(offset.size()), ld = round_up(taps, Simd::kLanes),
                image = g.h * g.w * g.c_in;
  const int64_t run = (g.dil_w == 1 ? g.kw : 1) * g.c_in;  // taps side by side in the frame
  const std::vector<float> weights = weights_by_tap(g, w, ld, true);
  std::vector<int64_t> channels(g.c_out);
  std::iota(channels.begin(), channels.end(), int64_t{0});
  parallel_for(g.n, [&](int64_t b) {
    thread_local std::vector<float> frame, dcol;
    float* out = dx + b * image;
    if (f.copies)
      frame.assign(f.rows * f.cols * f.c, 0.f);
    else
      std::memset(out, 0, sizeof(float) * image);
    float* windows = f.copies ? frame.data() : out;
    dcol.resize(g.ow * ld);
    for (int64_t oy = 0; oy < g.oh; ++oy) {
      const PixelRow row{g.c_out,
                         dy + (b * g.oh + oy) * g.ow * g.c_out,
                         g.c_out,
                         channels.data(),
                         weights.data(),
                         ld,
                         nullptr,
                         dcol.data(),
                         ld,
                         0};
      pixel_row<Simd>(row, g.ow, ld);
      float* window = windows + oy * f.window_row(g);
      for (int64_t ox = 0; ox < g.ow; ++ox, window += f.step)
        for (int64_t k = 0; k < taps; k += run)
          add_into(window + offset[k], dcol.data() + ox * ld + k, run);
    }
    if (f.copies)
      for (int64_t iy = 0; iy < g.h; ++iy)
        std::memcpy(out + iy * g.w * g.c_in,
                    frame.data() + ((iy + g.pad_top) * f.cols + g.pad_left) * f.c,
                    sizeof(float) * g.w * g.c_in);
  });
}

void conv2d_direct_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                   float* dw, BiasSums* bias) {
  with_output_vectors(g.c_out, [&](auto s) { weight_gradient<decltype(s)>(g, dy, x, dw, bias); });
}

}  // namespace fastconv::cpu::FASTCONV_ISA
