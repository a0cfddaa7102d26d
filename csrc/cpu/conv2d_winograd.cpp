// Winograd convolution for stride-1, undilated, ungrouped layers (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2016): F(4x4, 3x3) for 3x3 kernels, each
// 4x4 output tile costing 36 multiplies per (input, output) channel pair instead of 144,
// F(3x3, 3x3) for 3x3 kernels on maps that F(4x4, 3x3) tiles poorly (25 instead of 81), and
// F(2x2, 5x5) for 5x5 kernels, each 2x2 tile 36 instead of 100. The two on 6x6 patches
// interpolate at 0, +-1, +-2 and infinity, so they share the input transform and their
// rounding error is of the same size (about 10-20x the direct sum's); F(3x3, 3x3) drops -2.
//
// Per chunk of T output tiles m x m (tiles run over the whole batch), xi = 0..alpha^2 - 1:
//   V[xi] = B^T d B      input transform of each alpha x alpha patch
//   M[xi] = U[xi] V[xi]  alpha^2 GEMMs over channels, U[xi] = G g G^T precomputed per call
//   y tile (m x m) = A^T M A  output transform, + bias
// The transforms are linear and work per channel, so they vectorise along whatever is
// contiguous. The forward, both layouts: along NR tiles (NHWC gathers 8 channels of 8
// tiles at a time and transposes them in registers); V is (Ci x T) in the GEMM's packed-B
// slivers, M (Co x T). The NHWC weight gradient: along a register of channels, one tile at
// a time, with no transposes; V[xi] is (T x Ci) and dM[xi] (T x Co), row-major, and its
// GEMMs dU[xi] += dM[xi]^T V[xi] read both in place (micro_tile_cols). (The forward is not
// done that way: its GEMMs would then stream U as the wide B operand.)
//
// The transforms mix every value of a tile, so a NaN or Inf anywhere in a patch would
// reach outputs whose window never saw it. The output transform therefore reports any
// non-finite result and the caller recomputes that call with the direct GEMM, which keeps
// IEEE propagation exact.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/conv2d_winograd.h"
#include "cpu/gemm.h"
#include "cpu/lanes.h"
#include "cpu/parallel.h"
#include "cpu/transpose.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

// The 1-D transforms, written out so that multiplications by 0 and 1 cost nothing, on a
// float or a GCC vector T; `step` is the distance between successive inputs and outputs,
// so one function serves rows and columns of a tile. Each variant W has the input
// transform B^T (alpha x alpha, input_1d), the filter transform G (alpha x r, kG) and the
// output transform A^T (m x alpha, output_1d, with its adjoint).

// Interpolation at 0, +-1, +-2 and infinity: F(4x4, 3x3) and F(2x2, 5x5) share this 6x6 B^T.
struct Points6 {
  static constexpr int kAlpha = 6, kPoints = kAlpha * kAlpha;
  template <class T>
  static void input_1d(const T* d, T* t, int64_t step) {
    const T d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step];
    const T d5 = d[5 * step];
    t[0] = 4.f * d0 - 5.f * d2 + d4;
    t[step] = -4.f * (d1 + d2) + d3 + d4;
    t[2 * step] = 4.f * (d1 - d2) - d3 + d4;
    t[3 * step] = 2.f * (d3 - d1) - d2 + d4;
    t[4 * step] = 2.f * (d1 - d3) - d2 + d4;
    t[5 * step] = 4.f * d1 - 5.f * d3 + d5;
  }
};

struct F4x3 : Points6 {  // F(4x4, 3x3): 36 multiplies for 16 outputs, 144 direct
  static constexpr int kOut = 4, kR = 3;
  static constexpr float kG[kAlpha][kR] = {{1.f / 4, 0, 0},
                                           {-1.f / 6, -1.f / 6, -1.f / 6},
                                           {-1.f / 6, 1.f / 6, -1.f / 6},
                                           {1.f / 24, 1.f / 12, 1.f / 6},
                                           {1.f / 24, -1.f / 12, 1.f / 6},
                                           {0, 0, 1}};
  template <class T>
  static void output_1d(const T* m, T* o, int64_t in_step, int64_t out_step) {
    const int64_t s = in_step, so = out_step;
    const T m0 = m[0], m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s], m5 = m[5 * s];
    const T a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;
    o[0] = m0 + a + c;
    o[so] = b + 2.f * e;
    o[2 * so] = a + 4.f * c;
    o[3 * so] = b + 8.f * e + m5;
  }
  // Adjoint of output_1d: 4 gradients of a tile row/column -> 6 gradients of the points.
  template <class T>
  static void output_adjoint_1d(const T* o, T* m, int64_t in_step, int64_t out_step) {
    const int64_t s = in_step, sm = out_step;
    const T o0 = o[0], o1 = o[s], o2 = o[2 * s], o3 = o[3 * s];
    const T even = o0 + o2, odd = o1 + o3, even4 = o0 + 4.f * o2, odd8 = 2.f * o1 + 8.f * o3;
    m[0] = o0;
    m[sm] = even + odd;
    m[2 * sm] = even - odd;
    m[3 * sm] = even4 + odd8;
    m[4 * sm] = even4 - odd8;
    m[5 * sm] = o3;
  }
};

struct F2x5 : Points6 {  // F(2x2, 5x5): 36 multiplies for 4 outputs, 100 direct
  static constexpr int kOut = 2, kR = 5;
  static constexpr float kG[kAlpha][kR] = {{1.f / 4, 0, 0, 0, 0},
                                           {-1.f / 6, -1.f / 6, -1.f / 6, -1.f / 6, -1.f / 6},
                                           {-1.f / 6, 1.f / 6, -1.f / 6, 1.f / 6, -1.f / 6},
                                           {1.f / 24, 1.f / 12, 1.f / 6, 1.f / 3, 2.f / 3},
                                           {1.f / 24, -1.f / 12, 1.f / 6, -1.f / 3, 2.f / 3},
                                           {0, 0, 0, 0, 1}};
  template <class T>
  static void output_1d(const T* m, T* o, int64_t in_step, int64_t out_step) {
    const int64_t s = in_step;
    const T m1 = m[s], m2 = m[2 * s], m3 = m[3 * s], m4 = m[4 * s];
    o[0] = m[0] + (m1 + m2) + (m3 + m4);
    o[out_step] = (m1 - m2) + 2.f * (m3 - m4) + m[5 * s];
  }
  template <class T>
  static void output_adjoint_1d(const T* o, T* m, int64_t in_step, int64_t out_step) {
    const int64_t sm = out_step;
    const T o0 = o[0], o1 = o[in_step];
    m[0] = o0;
    m[sm] = o0 + o1;
    m[2 * sm] = o0 - o1;
    m[3 * sm] = o0 + 2.f * o1;
    m[4 * sm] = o0 - 2.f * o1;
    m[5 * sm] = o1;
  }
};

// F(3x3, 3x3), interpolating at 0, +-1, 2 and infinity: 25 multiplies for 9 outputs, 81
// direct. A 3x3 map is one whole tile, where F(4x4, 3x3) would use 9 of its 16 outputs.
struct F3x3 {
  static constexpr int kAlpha = 5, kPoints = kAlpha * kAlpha, kOut = 3, kR = 3;
  static constexpr float kG[kAlpha][kR] = {{1.f / 2, 0, 0},
                                           {1.f / 2, 1.f / 2, 1.f / 2},
                                           {1.f / 6, -1.f / 6, 1.f / 6},
                                           {1.f / 6, 1.f / 3, 2.f / 3},
                                           {0, 0, 1}};
  template <class T>
  static void input_1d(const T* d, T* t, int64_t step) {
    const T d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step];
    const T a = d3 - d1;
    t[0] = 2.f * (d0 - d2) + a;
    t[step] = d1 + d2 - a;
    t[2 * step] = 2.f * (d2 - d1) + d2 - d3;
    t[3 * step] = a;
    t[4 * step] = d4 - d2 - 2.f * a;
  }
  template <class T>
  static void output_1d(const T* m, T* o, int64_t in_step, int64_t out_step) {
    const int64_t s = in_step;
    const T m1 = m[s], m2 = m[2 * s], m3 = m[3 * s];
    o[0] = m[0] + (m1 + m2) + m3;
    o[out_step] = (m1 - m2) + 2.f * m3;
    o[2 * out_step] = (m1 + m2) + 4.f * m3 + m[4 * s];
  }
  template <class T>
  static void output_adjoint_1d(const T* o, T* m, int64_t in_step, int64_t out_step) {
    const int64_t sm = out_step;
    const T o0 = o[0], o1 = o[in_step], o2 = o[2 * in_step];
    m[0] = o0;
    m[sm] = o0 + o1 + o2;
    m[2 * sm] = o0 - o1 + o2;
    m[3 * sm] = o0 + 2.f * o1 + 4.f * o2;
    m[4 * sm] = o2;
  }
};

// The 2-D transforms of one tile, columns then rows, on kN lanes side by side: point p of
// lane l at [p * kN + l] (the input's points `in_step` apart instead, so that a transform can
// read a matrix in place). T = float, kN = NR: the NR tiles of a sliver, each loop over l a
// vector loop; T = Lanes, kN = 1: a register of one tile's channels. A kIn x kIn tile becomes
// kOut x kOut by the 1-D transform f(in, out, in_step, out_step) along each axis.
template <int kIn, int kOut, int kN, class T, class F>
inline void transform_2d(const T* in, int64_t in_step, T* out, F f) {
  T tmp[kOut * kIn * kN];
  for (int j = 0; j < kIn; ++j)
    for (int l = 0; l < kN; ++l)
      f(in + j * in_step + l, tmp + j * kN + l, kIn * in_step, int64_t{kIn * kN});
  for (int i = 0; i < kOut; ++i)
    for (int l = 0; l < kN; ++l) f(tmp + i * kIn * kN + l, out + i * kOut * kN + l, kN, kN);
}

template <class W, class T, int kN>
inline void input_2d(const T* d, T* out) {  // B^T d B
  transform_2d<W::kAlpha, W::kAlpha, kN>(
      d, kN, out, [](const T* a, T* b, int64_t step, int64_t) { W::input_1d(a, b, step); });
}

template <class W, class T, int kN>
inline void output_2d(const T* m, int64_t point_step, T* out) {  // A^T m A
  transform_2d<W::kAlpha, W::kOut, kN>(
      m, point_step, out,
      [](const T* a, T* b, int64_t si, int64_t so) { W::output_1d(a, b, si, so); });
}

template <class W, class T, int kN>
inline void output_adjoint_2d(const T* d, T* out) {  // A d A^T
  transform_2d<W::kOut, W::kAlpha, kN>(d, kN, out, [](const T* a, T* b, int64_t si, int64_t so) {
    W::output_adjoint_1d(a, b, si, so);
  });
}

// The output tiles (size x size) of a layer, over the whole batch.
struct TileMap {
  const ConvGeometry& g;
  int64_t size, tiles_h, tiles_w;
  TileMap(const ConvGeometry& geometry, int64_t tile)
      : g(geometry),
        size(tile),
        tiles_h((g.oh + tile - 1) / tile),
        tiles_w((g.ow + tile - 1) / tile) {}
  int64_t tiles() const { return g.n * tiles_h * tiles_w; }
  // Output origin of tile t: image b, row oy, column ox.
  void origin(int64_t t, int64_t& b, int64_t& oy, int64_t& ox) const {
    b = t / (tiles_h * tiles_w);
    oy = t / tiles_w % tiles_h * size;
    ox = t % tiles_w * size;
  }
};

// Offsets (at channel 0) of the cells of a size x size patch per tile of a sliver: the patch
// of tile l starts `shift` rows/columns from the tile's output origin in a plane of the
// given size; -1 marks cells outside the plane and lanes past the last tile. Computed once
// per sliver, they spare the per-channel loops all index arithmetic and bounds checks.
template <int kSize>
void patch_offsets(const TileMap& map, int64_t t_first, int64_t tiles, int64_t shift_y,
                   int64_t shift_x, int64_t height, int64_t width, int64_t channels,
                   int64_t (&off)[kSize * kSize][NR]) {
  const bool nhwc = map.g.channels_last != 0;
  for (int l = 0; l < NR; ++l) {
    int64_t b = 0, oy = 0, ox = 0;
    if (l < tiles) map.origin(t_first + l, b, oy, ox);
    for (int i = 0; i < kSize; ++i)
      for (int j = 0; j < kSize; ++j) {
        const int64_t y = oy + shift_y + i, x = ox + shift_x + j;
        const bool inside = l < tiles && y >= 0 && y < height && x >= 0 && x < width;
        off[i * kSize + j][l] =
            inside ? ConvGeometry::offset(nhwc, channels, height, width, b, 0, y, x) : -1;
      }
  }
}

// U[xi] = G g G^T for every (co, ci) (g the r x r kernel), written straight into kWidth-slivers
// of a (Co x Ci) matrix per xi, kWidth output channels at a time so that each store is kWidth
// contiguous floats: no transposing pass over a (pairs x 36) intermediate. kWidth = MR gives
// the GEMM's packed-A format (U as the left operand), NR its packed-B format of U^T.
// The buffers belong to the calling thread and are reused from call to call: U of a wide
// layer is megabytes, and fresh pages would cost a page fault each.
template <class W, int64_t kWidth = MR>
const std::vector<Buffer>& transform_weights(const ConvGeometry& g, const float* w) {
  constexpr int kR = W::kR;
  const int64_t slivers = (g.c_out + kWidth - 1) / kWidth;
  thread_local std::vector<Buffer> calling_thread_u(W::kPoints);
  std::vector<Buffer>& packed = calling_thread_u;  // the workers below write the caller's U
  for (Buffer& u : packed) u.resize(slivers * kWidth * g.c_in);
  parallel_for(slivers, [&](int64_t s) {
    for (int64_t ci = 0; ci < g.c_in; ++ci) {
      float wr[kR][kR][kWidth] = {}, gw[W::kAlpha][kR][kWidth] = {};  // rows past C_out stay 0
      for (int64_t r = 0; r < std::min(kWidth, g.c_out - s * kWidth); ++r)
        for (int k = 0; k < kR * kR; ++k)
          wr[k / kR][k % kR][r] = w[((s * kWidth + r) * g.c_in + ci) * kR * kR + k];
      for (int i = 0; i < W::kAlpha; ++i)
        for (int k = 0; k < kR; ++k)
          for (int j = 0; j < kR; ++j)
            for (int r = 0; r < kWidth; ++r) gw[i][j][r] += W::kG[i][k] * wr[k][j][r];
      for (int i = 0; i < W::kAlpha; ++i)
        for (int j = 0; j < W::kAlpha; ++j) {
          float u[kWidth] = {};
          for (int k = 0; k < kR; ++k)
            for (int r = 0; r < kWidth; ++r) u[r] += gw[i][k][r] * W::kG[j][k];
          std::memcpy(packed[i * W::kAlpha + j].data() + (s * g.c_in + ci) * kWidth, u, sizeof u);
        }
    }
  });
  return packed;
}

// ---- Forward (both layouts) and NCHW weight gradient: NR tiles per vector ----

constexpr int64_t kLanes = LaneGroup<Lanes, 1>::kStep;

// The distance in floats between consecutive points' blocks of V, M or dM: at least `floats`
// and an odd number of cache lines. A transform reads or writes a tile's 36 points one after
// another; at a multiple of 4 KiB apart they would all fall in one set of L1 and evict each
// other, at an odd number of lines apart they fall in 36 different sets.
int64_t point_stride(int64_t floats) { return ((floats + 15) / 16 | 1) * 16; }

// NHWC, 8 channels at a time: d[c][p * NR + l] = channel c0 + c of cell p of tile l, read
// as 8-float runs and transposed in registers (instead of 64 single-float gathers).
template <int kCells>
void gather_channels8(const float* x, const int64_t (&off)[kCells][NR], int64_t c0,
                      float (*d)[kCells * NR]) {
  static const float zeros[8] = {};
  for (int p = 0; p < kCells; ++p)
    for (int lg = 0; lg < NR; lg += 8) {
      const float* src[8];
      float* dst[8];
      for (int k = 0; k < 8; ++k) {
        src[k] = off[p][lg + k] >= 0 ? x + off[p][lg + k] + c0 : zeros;
        dst[k] = d[k] + p * NR + lg;
      }
      transpose8(src, dst);
    }
}

// Input transform of tiles [t0, t0 + count): store(xi, ci, sliver, lanes) receives the NR
// transformed values of point xi, channel ci, for the tiles of one sliver.
template <class W, class Store>
void transform_input_tiles(const TileMap& map, const float* x, int64_t t0, int64_t count,
                           Store&& store) {
  const ConvGeometry& g = map.g;
  const int64_t channel_stride = g.channels_last ? 1 : g.h * g.w;
  for (int64_t s = 0; s * NR < count; ++s) {
    int64_t off[W::kPoints][NR];
    patch_offsets<W::kAlpha>(map, t0 + s * NR, count - s * NR, -g.pad_top, -g.pad_left, g.h, g.w,
                             g.c_in, off);
    auto transform = [&](const float* d, int64_t ci) {
      alignas(64) float out[W::kPoints * NR];
      input_2d<W, float, NR>(d, out);
      for (int xi = 0; xi < W::kPoints; ++xi) store(xi, ci, s, out + xi * NR);
    };
    const int64_t blocked = g.channels_last ? g.c_in / 8 * 8 : 0;
    for (int64_t c0 = 0; c0 < blocked; c0 += 8) {
      alignas(64) float d[8][W::kPoints * NR];
      gather_channels8<W::kPoints>(x, off, c0, d);
      for (int c = 0; c < 8; ++c) transform(d[c], c0 + c);
    }
    for (int64_t ci = blocked; ci < g.c_in; ++ci) {
      alignas(64) float d[W::kPoints * NR];
      const float* xc = x + ci * channel_stride;
      for (int p = 0; p < W::kPoints; ++p)
        for (int l = 0; l < NR; ++l) d[p * NR + l] = off[p][l] >= 0 ? xc[off[p][l]] : 0.f;
      transform(d, ci);
    }
  }
}

// The NHWC output transform writes each pixel's channels kBlock at a time: 8, or with
// streaming stores 16, a whole cache line, so that no line is left half written in a
// write-combining buffer. Plain stores to a large output first read each of its lines from
// memory; streaming stores skip that read.
bool streams_winograd_output(const ConvGeometry& g, const float* y) {
  return g.channels_last && streams_lines(y, g.c_out, g.y_size());
}

// Output transform of M (m[xi * m_step + co * ldm + tile]) into y; false on a non-finite value.
template <class W, bool kStream>
bool transform_output_tiles(const TileMap& map, const float* m, int64_t ldm, int64_t m_step,
                            const float* bias, int64_t t0, int64_t count, float* y) {
  const ConvGeometry& g = map.g;
  const int64_t channel_stride = g.channels_last ? 1 : g.oh * g.ow;
  constexpr int kOut = W::kOut, kBlock = kStream ? 16 : 8;
  float probe = 0.f;  // becomes NaN if any output is NaN or infinite
  for (int64_t s = 0; s * NR < count; ++s) {
    int64_t off[kOut * kOut][NR];
    patch_offsets<kOut>(map, t0 + s * NR, count - s * NR, 0, 0, g.oh, g.ow, g.c_out, off);
    // out = A^T M A + bias for channel co, its cells p at out[p * NR + lane].
    auto transform = [&](int64_t co, float* out) {
      output_2d<W, float, NR>(m + co * ldm + s * NR, m_step, out);
      const float b = bias ? bias[co] : 0.f;
#pragma omp simd reduction(+ : probe)
      for (int i = 0; i < kOut * kOut * NR; ++i) {
        out[i] += b;
        probe += out[i] * 0.f;
      }
    };
    // NHWC, kBlock channels at a time, transposed 8 x 8 so that each pixel gets its run
    // (streaming: through `run`, and only the pixels inside the map).
    const int64_t blocked = g.channels_last ? g.c_out / kBlock * kBlock : 0;
    for (int64_t c0 = 0; c0 < blocked; c0 += kBlock) {
      alignas(64) float out[kBlock][kOut * kOut * NR], run[8][kBlock], sink[kBlock];
      for (int c = 0; c < kBlock; ++c) transform(c0 + c, out[c]);
      for (int p = 0; p < kOut * kOut; ++p)
        for (int lg = 0; lg < NR; lg += 8) {
          float* pixel[8];
          for (int k = 0; k < 8; ++k)
            pixel[k] = off[p][lg + k] >= 0 ? y + off[p][lg + k] + c0 : sink;
          for (int h = 0; h < kBlock; h += 8) {
            const float* src[8];
            float* dst[8];
            for (int k = 0; k < 8; ++k) {
              src[k] = out[h + k] + p * NR + lg;
              dst[k] = kStream ? run[k] + h : pixel[k] + h;
            }
            transpose8(src, dst);
          }
          if (kStream)
            for (int k = 0; k < 8; ++k)
              if (pixel[k] != sink)
                for (int h = 0; h < kBlock; h += kLanes)
                  store_out<true>(pixel[k] + h, load<Lanes>(run[k] + h));
        }
    }
    for (int64_t co = blocked; co < g.c_out; ++co) {
      alignas(64) float out[kOut * kOut * NR];
      transform(co, out);
      float* yc = y + co * channel_stride;
      for (int p = 0; p < kOut * kOut; ++p)
        for (int l = 0; l < NR; ++l)
          if (off[p][l] >= 0) yc[off[p][l]] = out[p * NR + l];
    }
  }
  if (kStream) stream_fence();
  return probe == 0.f;
}

// dM = A dY A^T for tiles [t0, t0 + count) of NCHW dy: dm[xi * m_step + co * ldm + tile].
template <class W>
void transform_output_gradient_nchw(const TileMap& map, const float* dy, int64_t t0, int64_t count,
                                    float* dm, int64_t ldm, int64_t m_step) {
  const ConvGeometry& g = map.g;
  constexpr int kOut = W::kOut;
  for (int64_t s = 0; s * NR < count; ++s) {
    int64_t off[kOut * kOut][NR];
    patch_offsets<kOut>(map, t0 + s * NR, count - s * NR, 0, 0, g.oh, g.ow, g.c_out, off);
    for (int64_t co = 0; co < g.c_out; ++co) {
      alignas(64) float d[kOut * kOut * NR], out[W::kPoints * NR];
      const float* dyc = dy + co * g.oh * g.ow;
      for (int p = 0; p < kOut * kOut; ++p)
        for (int l = 0; l < NR; ++l) d[p * NR + l] = off[p][l] >= 0 ? dyc[off[p][l]] : 0.f;
      output_adjoint_2d<W, float, NR>(d, out);
      for (int xi = 0; xi < W::kPoints; ++xi)
        std::memcpy(dm + xi * m_step + co * ldm + s * NR, out + xi * NR, sizeof(float) * NR);
    }
  }
}

// ---- NHWC weight gradient: a register of channels per vector, one tile at a time ----

// The first n <= kStep lanes at p, the rest 0: a layer's last channels (AVX-512: one masked
// load, which reads nothing past them).
inline Lanes load_first(const float* p, int64_t n) {
  if (n == LaneGroup<Lanes, 1>::kStep) return load<Lanes>(p);
#if defined(__AVX512F__)
  return reinterpret_cast<Lanes>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
#endif
  Lanes v{};
  std::memcpy(&v, p, sizeof(float) * n);
  return v;
}

// Row strides of V (C_in) and M or dM (C_out): whole vectors, and room for every read a
// GEMM tile makes past the last channel (NR of V's columns, MR of dM's rows).
int64_t v_stride(const ConvGeometry& g) { return round_up(g.c_in, NR); }
int64_t m_stride(const ConvGeometry& g) { return round_up(round_up(g.c_out, MR), kLanes); }

// The layout of an NHWC item's V (count x C_in per transform point) and M or dM (count x
// C_out): row strides, the distances between points' blocks, and the buffers sized for them.
struct NhwcItem {
  int64_t ldv, ldm, v_step, m_step;
  NhwcItem(const ConvGeometry& g, int points, int64_t count, Buffer& v, Buffer& m)
      : ldv(v_stride(g)),
        ldm(m_stride(g)),
        v_step(point_stride(count * ldv)),
        m_step(point_stride(count * ldm)) {
    v.resize(points * v_step);
    m.resize(points * m_step);
  }
};

// Input transform of tiles [t0, t0 + count): v[xi * v_step + t * ldv + ci].
template <class W>
void transform_input_nhwc(const TileMap& map, const float* x, int64_t t0, int64_t count, float* v,
                          int64_t ldv, int64_t v_step) {
  const ConvGeometry& g = map.g;
  for (int64_t s = 0; s * NR < count; ++s) {
    int64_t off[W::kPoints][NR];
    patch_offsets<W::kAlpha>(map, t0 + s * NR, count - s * NR, -g.pad_top, -g.pad_left, g.h, g.w,
                             g.c_in, off);
    for (int64_t l = 0; l < std::min(NR, count - s * NR); ++l) {
      float* row = v + (s * NR + l) * ldv;
      for (int64_t c0 = 0; c0 < g.c_in; c0 += kLanes) {
        const int64_t n = std::min(kLanes, g.c_in - c0);
        Lanes d[W::kPoints], out[W::kPoints];
        for (int p = 0; p < W::kPoints; ++p)
          d[p] = off[p][l] >= 0 ? load_first(x + off[p][l] + c0, n) : Lanes{};
        input_2d<W, Lanes, 1>(d, out);
        for (int xi = 0; xi < W::kPoints; ++xi) store(row + xi * v_step + c0, out[xi]);
      }
    }
  }
}

// dM = A dY A^T for tiles [t0, t0 + count) of dy: dm[xi * m_step + t * ldm + co].
template <class W>
void transform_output_gradient_nhwc(const TileMap& map, const float* dy, int64_t t0, int64_t count,
                                    float* dm, int64_t ldm, int64_t m_step) {
  const ConvGeometry& g = map.g;
  constexpr int kOut = W::kOut;
  for (int64_t s = 0; s * NR < count; ++s) {
    int64_t off[kOut * kOut][NR];
    patch_offsets<kOut>(map, t0 + s * NR, count - s * NR, 0, 0, g.oh, g.ow, g.c_out, off);
    for (int64_t l = 0; l < std::min(NR, count - s * NR); ++l) {
      float* row = dm + (s * NR + l) * ldm;
      for (int64_t c0 = 0; c0 < g.c_out; c0 += kLanes) {
        const int64_t n = std::min(kLanes, g.c_out - c0);
        Lanes d[kOut * kOut], out[W::kPoints];
        for (int p = 0; p < kOut * kOut; ++p)
          d[p] = off[p][l] >= 0 ? load_first(dy + off[p][l] + c0, n) : Lanes{};
        output_adjoint_2d<W, Lanes, 1>(d, out);
        for (int xi = 0; xi < W::kPoints; ++xi) store(row + xi * m_step + c0, out[xi]);
      }
    }
  }
}

// dw[co][ci] = G^T dU[co][ci] G, dU the sum in thread order of the first `count` partials,
// each du[xi * rows * cols + row * cols + col] with (row, col) = (co, ci), or (ci, co) where
// `transposed`: one row per work item, a register of columns at a time.
template <class W>
bool untransform_weight_gradient(const ConvGeometry& g, const std::vector<Buffer>& partial,
                                 int count, bool transposed, float* dw) {
  constexpr int kR = W::kR;
  const int64_t rows = transposed ? g.c_in : g.c_out, cols = transposed ? g.c_out : g.c_in;
  std::vector<char> finite(rows, 1);
  parallel_for(rows, [&](int64_t row) {
    Lanes probe{};  // becomes NaN in a lane if any gradient there is NaN or infinite
    for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
      const int64_t n = std::min(kLanes, cols - c0);
      Lanes gu[kR][W::kAlpha] = {};  // G^T dU
      for (int xi = 0; xi < W::kPoints; ++xi) {
        const int64_t at = (xi * rows + row) * cols + c0;
        Lanes v = load_first(partial[0].data() + at, n);
        for (int t = 1; t < count; ++t) v += load_first(partial[t].data() + at, n);
        for (int k = 0; k < kR; ++k) gu[k][xi % W::kAlpha] += W::kG[xi / W::kAlpha][k] * v;
      }
      alignas(64) float taps[kR * kR][kLanes];
      for (int i = 0; i < kR; ++i)
        for (int j = 0; j < kR; ++j) {
          Lanes v{};
          for (int k = 0; k < W::kAlpha; ++k) v += gu[i][k] * W::kG[k][j];
          probe += v * 0.f;
          store(taps[i * kR + j], v);
        }
      for (int64_t l = 0; l < n; ++l) {
        const int64_t co = transposed ? c0 + l : row, ci = transposed ? row : c0 + l;
        for (int p = 0; p < kR * kR; ++p) dw[(co * g.c_in + ci) * kR * kR + p] = taps[p][l];
      }
    }
    finite[row] = !any_lane(probe != probe);
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

// Tiles per work item: their V and M (or dM), per_tile_bytes each, should fit in `budget`
// bytes of cache, and each thread should get several items, so that one thread held up
// does not stall the rest.
template <class W>
int64_t tiles_per_item(const ConvGeometry& g, int64_t tiles, int64_t budget) {
  const int64_t per_tile_bytes = W::kPoints * (g.c_in + g.c_out) * 4;
  const int64_t cache_bound = std::min<int64_t>(256, budget / per_tile_bytes / NR * NR);
  const int64_t balance_bound = round_up(tiles / (4 * num_threads()) + 1, NR);
  return std::max<int64_t>(32, std::min(cache_bound, balance_bound));
}

// The forward's items keep V and M in half a core's L2, the other half left to the weights
// and the patches of x: a larger budget streams them from L3 (measured: on a 1 MiB L2, items
// sized for 1 MiB ran 8-10 % slower than items sized for half of it).
int64_t forward_budget() { return l2_bytes() / 2; }

// The weight gradient accumulates each item's 36 GEMMs into dU (36 x C_out x C_in): small
// items keep V and dM in L2 but stream dU once more each, and where dU is large that costs
// more. Items get about as many bytes of V and dM as dU has, within [1 MB, 8 MB].
template <class W>
int64_t weight_gradient_budget(const ConvGeometry& g) {
  const int64_t du_bytes = W::kPoints * g.c_out * g.c_in * 4;
  return std::clamp<int64_t>(du_bytes, 1 << 20, 8 << 20);
}

// One item of the forward: tiles [t0, t0 + count).
template <class W>
bool forward_item(const TileMap& map, const std::vector<Buffer>& u, const float* x,
                  const float* bias, int64_t t0, int64_t count, float* y) {
  const ConvGeometry& g = map.g;
  const int64_t width = round_up(count, NR);
  const int64_t v_step = point_stride(g.c_in * width), m_step = point_stride(g.c_out * width);
  thread_local Buffer v, m;
  v.resize(W::kPoints * v_step);
  m.resize(W::kPoints * m_step);
  // V in the GEMM's packed-B layout: v[xi * v_step + (s * Ci + ci) * NR + lane]
  transform_input_tiles<W>(
      map, x, t0, count, [&](int xi, int64_t ci, int64_t s, const float* lanes) {
        std::memcpy(v.data() + xi * v_step + (s * g.c_in + ci) * NR, lanes, sizeof(float) * NR);
      });
  for (int xi = 0; xi < W::kPoints; ++xi) {
    const float* vx = v.data() + xi * v_step;
    auto weights = [&](int64_t i0, int64_t, int64_t k0, int64_t) {
      return prepacked_panel(u[xi], g.c_in, MR, i0, k0);
    };
    auto tiles_panel = [&](int64_t k0, int64_t, int64_t, int64_t) {
      return Panel{vx + k0 * NR, g.c_in * NR};
    };
    gemm(g.c_out, width, g.c_in, weights, tiles_panel, m.data() + xi * m_step, width, false);
  }
  return streams_winograd_output(g, y)
             ? transform_output_tiles<W, true>(map, m.data(), width, m_step, bias, t0, count, y)
             : transform_output_tiles<W, false>(map, m.data(), width, m_step, bias, t0, count, y);
}

// ---- NHWC forward where U fits in L2: a register of channels per vector, no transposes ----
//
// The forward above transposes every patch and output tile between pixels and tile lanes,
// which costs as much as its GEMMs where a layer has few channels. Here V[xi] (T x Ci) and
// M[xi] (T x Co) keep channels contiguous, as in the NHWC weight gradient, and the GEMMs
// M[xi] = V[xi] U[xi]^T read V's rows in place and stream U[xi]^T as the wide operand:
// cheap while U takes at most three quarters of a core's L2. C_in
// must be a multiple of 8 (24 channels: a whole and a half vector, the half read masked);
// other layers keep the forward above, and so does the AVX2 build: with 16 registers, a
// tile's 36 vectors of points spill, and that path measured half as fast as the transposing
// one.

template <class W>
bool forward_by_channels(const ConvGeometry& g) {
  return kLanes == 16 && g.channels_last && g.c_in % 8 == 0 &&
         W::kPoints * g.c_in * g.c_out * 4 <= l2_bytes() * 3 / 4;
}

// y = A^T M A + bias for tiles [t0, t0 + count), M given as m[xi * m_step + t * ldm + co];
// false on a non-finite value.
template <class W, bool kStream>
bool transform_output_nhwc(const TileMap& map, const float* m, int64_t ldm, int64_t m_step,
                           const float* bias, int64_t t0, int64_t count, float* y) {
  const ConvGeometry& g = map.g;
  constexpr int kOut = W::kOut;
  Lanes probe{};  // becomes NaN in a lane if any output there is NaN or infinite
  for (int64_t s = 0; s * NR < count; ++s) {
    int64_t off[kOut * kOut][NR];
    patch_offsets<kOut>(map, t0 + s * NR, count - s * NR, 0, 0, g.oh, g.ow, g.c_out, off);
    for (int64_t l = 0; l < std::min(NR, count - s * NR); ++l) {
      const float* row = m + (s * NR + l) * ldm;
      for (int64_t c0 = 0; c0 < g.c_out; c0 += kLanes) {
        const int64_t n = std::min(kLanes, g.c_out - c0);
        Lanes points[W::kPoints], out[kOut * kOut];
        for (int xi = 0; xi < W::kPoints; ++xi) points[xi] = load_first(row + xi * m_step + c0, n);
        output_2d<W, Lanes, 1>(points, 1, out);
        const Lanes b = bias ? load_first(bias + c0, n) : Lanes{};
        for (int p = 0; p < kOut * kOut; ++p) {
          const Lanes v = out[p] + b;
          probe += v * 0.f;
          if (off[p][l] < 0) continue;
          if (n == kLanes)
            store_out<kStream>(y + off[p][l] + c0, v);
          else
            std::memcpy(y + off[p][l] + c0, &v, sizeof(float) * n);
        }
      }
    }
  }
  if (kStream) stream_fence();
  return !any_lane(probe != probe);
}

template <class W>
bool forward_item_by_channels(const TileMap& map, const std::vector<Buffer>& ut, const float* x,
                              const float* bias, int64_t t0, int64_t count, float* y) {
  const ConvGeometry& g = map.g;
  thread_local Buffer v, m;
  thread_local std::vector<const float*> rows;
  const auto [ldv, ldm, v_step, m_step] = NhwcItem(g, W::kPoints, count, v, m);
  rows.resize(round_up(count, MR));
  transform_input_nhwc<W>(map, x, t0, count, v.data(), ldv, v_step);
  for (int xi = 0; xi < W::kPoints; ++xi) {
    const float* vx = v.data() + xi * v_step;
    for (int64_t t = 0; t < round_up(count, MR); ++t) rows[t] = vx + std::min(t, count - 1) * ldv;
    float* mx = m.data() + xi * m_step;
    for (int64_t o0 = 0; o0 < g.c_out; o0 += NR) {
      const float* sliver = ut[xi].data() + o0 * g.c_in;  // NR-sliver o0 / NR of U[xi]^T
      for (int64_t t = 0; t < count; t += MR)
        micro_tile_rows(1, g.c_in, rows.data() + t, &sliver, nullptr, mx + t * ldm + o0, ldm,
                        std::min(MR, count - t), std::min(NR, g.c_out - o0), false);
    }
  }
  return streams_winograd_output(g, y)
             ? transform_output_nhwc<W, true>(map, m.data(), ldm, m_step, bias, t0, count, y)
             : transform_output_nhwc<W, false>(map, m.data(), ldm, m_step, bias, t0, count, y);
}

template <class W>
bool forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  const TileMap map(g, W::kOut);
  const int64_t tiles = map.tiles(), chunk = tiles_per_item<W>(g, tiles, forward_budget());
  const bool by_channels = forward_by_channels<W>(g);
  const std::vector<Buffer>& u =
      by_channels ? transform_weights<W, NR>(g, w) : transform_weights<W, MR>(g, w);
  const int64_t items = (tiles + chunk - 1) / chunk;
  std::vector<char> finite(items, 1);
  parallel_for(items, [&](int64_t item) {
    const int64_t t0 = item * chunk, count = std::min(chunk, tiles - t0);
    finite[item] = by_channels ? forward_item_by_channels<W>(map, u, x, bias, t0, count, y)
                               : forward_item<W>(map, u, x, bias, t0, count, y);
  });
  for (char f : finite)
    if (!f) return false;
  return true;
}

// One item's share of dU (NHWC): the GEMMs read V and dM in place, and each micro-tile
// asks for the next one's rows of dU first: a wide layer's dU is megabytes, and a tile that
// waited for its rows to arrive from memory would leave the FMA units idle half the time.
template <class W>
void weight_gradient_item_nhwc(const TileMap& map, const float* dy, const float* x, int64_t t0,
                               int64_t count, float* du, bool accumulate) {
  const ConvGeometry& g = map.g;
  thread_local Buffer v, dm;
  thread_local std::vector<const float*> v_rows;
  const auto [ldv, ldm, v_step, m_step] = NhwcItem(g, W::kPoints, count, v, dm);
  v_rows.resize(count);
  transform_input_nhwc<W>(map, x, t0, count, v.data(), ldv, v_step);
  transform_output_gradient_nhwc<W>(map, dy, t0, count, dm.data(), ldm, m_step);
  for (int xi = 0; xi < W::kPoints; ++xi) {
    for (int64_t p = 0; p < count; ++p) v_rows[p] = v.data() + xi * v_step + p * ldv;
    const float* dmx = dm.data() + xi * m_step;
    float* dux = du + xi * g.c_out * g.c_in;
    for (int64_t c0 = 0; c0 < g.c_in; c0 += NR) {
      const int64_t nr = std::min(NR, g.c_in - c0);
      for (int64_t o0 = 0; o0 < g.c_out; o0 += MR) {
        for (int64_t r = o0 + MR; r < std::min(o0 + 2 * MR, g.c_out); ++r)
          prefetch_floats(dux + r * g.c_in + c0, nr);
        micro_tile_cols(count, dmx + o0, ldm, v_rows.data(), c0, dux + o0 * g.c_in + c0, g.c_in,
                        std::min(MR, g.c_out - o0), nr, accumulate);
      }
    }
  }
}

// One item's share of dU (NCHW): packed GEMMs, dU^T where `transposed`.
template <class W>
void weight_gradient_item_nchw(const TileMap& map, const float* dy, const float* x, int64_t t0,
                               int64_t count, float* du, bool transposed, bool accumulate) {
  const ConvGeometry& g = map.g;
  const int64_t width = round_up(count, NR);
  const int64_t v_step = point_stride(g.c_in * width), m_step = point_stride(g.c_out * width);
  thread_local Buffer v, dm;
  v.resize(W::kPoints * v_step);  // every lane is written: tiles past `count` as 0
  dm.resize(W::kPoints * m_step);
  transform_input_tiles<W>(
      map, x, t0, count, [&](int xi, int64_t ci, int64_t s, const float* lanes) {
        std::memcpy(v.data() + xi * v_step + ci * width + s * NR, lanes, sizeof(float) * NR);
      });
  transform_output_gradient_nchw<W>(map, dy, t0, count, dm.data(), width, m_step);
  const float* left = transposed ? v.data() : dm.data();
  const float* right = transposed ? dm.data() : v.data();
  const int64_t left_step = transposed ? v_step : m_step;
  const int64_t right_step = transposed ? m_step : v_step;
  const int64_t rows = transposed ? g.c_in : g.c_out, cols = transposed ? g.c_out : g.c_in;
  for (int xi = 0; xi < W::kPoints; ++xi) {
    StridedPacker a{left + xi * left_step, width, 1, MR, &scratch_a()};
    StridedPacker b{right + xi * right_step, width, 1, NR, &scratch_b()};
    gemm(rows, cols, width, a, as_b(b), du + xi * rows * cols, cols, accumulate);
  }
}

// dU[xi] (Co x Ci) = sum over tiles of dM[xi]^T V[xi] (NHWC; NCHW: dM[xi] V[xi]^T): 36 GEMMs
// whose depth is the tiles, accumulated per thread (each thread's first item writes its
// partial, so nothing is zeroed first) and reduced in thread order. NHWC reads both
// operands in place (micro_tile_cols), rows of dM and of V being tiles. NCHW packs them;
// where C_in is not a multiple of NR but C_out is (the first layer after a 24-channel
// stem), its GEMMs compute dU^T = V dM^T, so that no micro-tile column is padding.
template <class W>
bool backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  const TileMap map(g, W::kOut);
  const int64_t tiles = map.tiles(),
                chunk = tiles_per_item<W>(g, tiles, weight_gradient_budget<W>(g));
  const int64_t items = (tiles + chunk - 1) / chunk, size = W::kPoints * g.c_out * g.c_in;
  const bool transposed = !g.channels_last && g.c_in % NR != 0 && g.c_out % NR == 0;
  std::vector<Buffer>& partial = partial_buffers(num_threads(), size);
  int team_size = 1;
  parallel_threads(num_threads(), [&](int t, int team) {
    if (t == 0) team_size = team;
    const int64_t first = items * t / team, last = items * (t + 1) / team;
    float* du = partial[t].data();
    if (first == last) std::fill(du, du + size, 0.f);
    for (int64_t item = first; item < last; ++item) {
      const int64_t t0 = item * chunk, count = std::min(chunk, tiles - t0);
      if (g.channels_last)
        weight_gradient_item_nhwc<W>(map, dy, x, t0, count, du, item > first);
      else
        weight_gradient_item_nchw<W>(map, dy, x, t0, count, du, transposed, item > first);
    }
  });
  return untransform_weight_gradient<W>(g, partial, team_size, transposed, dw);
}

}  // namespace

bool conv2d_winograd(Algorithm a, const ConvGeometry& g, const float* x, const float* w,
                     const float* bias, float* y) {
  switch (a) {
    case Algorithm::winograd_f3x3:
      return forward<F3x3>(g, x, w, bias, y);
    case Algorithm::winograd_f2x5:
      return forward<F2x5>(g, x, w, bias, y);
    default:
      return forward<F4x3>(g, x, w, bias, y);
  }
}

bool conv2d_winograd_backward_weight(Algorithm a, const ConvGeometry& g, const float* dy,
                                     const float* x, float* dw) {
  switch (a) {
    case Algorithm::winograd_f3x3:
      return backward_weight<F3x3>(g, dy, x, dw);
    case Algorithm::winograd_f2x5:
      return backward_weight<F2x5>(g, dy, x, dw);
    default:
      return backward_weight<F4x3>(g, dy, x, dw);
  }
}

}  // namespace fastconv::cpu::FASTCONV_ISA
