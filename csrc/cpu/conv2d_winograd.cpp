// Winograd F(4x4, 3x3) for 3x3, stride-1, undilated, ungrouped convolutions (Lavin & Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2016): each 4x4 output tile costs
// 36 multiplies per (input, output) channel pair instead of 144, so the GEMM work drops 4x.
//
// Per chunk of TB output tiles (tiles run over the whole batch):
//   V[xi] (Ci x TB) = B^T d B      input transform of each 6x6 patch, xi = 0..35
//   M[xi] (Co x TB) = U[xi] V[xi]  36 GEMMs, U[xi] (Co x Ci) = G g G^T precomputed per call
//   y tile (4x4)    = A^T M A      output transform, + bias
// V is written straight into the GEMM's packed-B format (slivers of NR tiles), so the GEMMs
// pack nothing. Transforms work on NR tiles at once, so they vectorise across tiles.
//
// The transforms mix every value of a tile, so a NaN or Inf anywhere in a 6x6 patch would
// reach outputs whose window never saw it. The output transform therefore reports any
// non-finite result and the caller recomputes that call with the direct GEMM, which keeps
// IEEE propagation exact.
#include <cmath>
#include <cstring>

#include "cpu/conv2d_winograd.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int kOut = 4, kAlpha = 6, kPoints = kAlpha * kAlpha;
// Input transform B^T (input_1d below), filter transform G, output transform A^T
// (output_1d below).
constexpr float kG[kAlpha][3] = {{1.f / 4, 0, 0},
                                 {-1.f / 6, -1.f / 6, -1.f / 6},
                                 {-1.f / 6, 1.f / 6, -1.f / 6},
                                 {1.f / 24, 1.f / 12, 1.f / 6},
                                 {1.f / 24, -1.f / 12, 1.f / 6},
                                 {0, 0, 1}};

// The 1-D transforms, written out so that multiplications by 0 and 1 cost nothing. Each
// works on NR lanes (tiles) at once; `step` is the distance between successive inputs and
// outputs, in lanes, so one function serves rows and columns of a tile.
inline void input_1d(const float* d, float* t, int step) {
  const int s = step * NR;
  for (int l = 0; l < NR; ++l) {
    const float d0 = d[l], d1 = d[s + l], d2 = d[2 * s + l], d3 = d[3 * s + l];
    const float d4 = d[4 * s + l], d5 = d[5 * s + l];
    t[l] = 4.f * d0 - 5.f * d2 + d4;
    t[s + l] = -4.f * (d1 + d2) + d3 + d4;
    t[2 * s + l] = 4.f * (d1 - d2) - d3 + d4;
    t[3 * s + l] = 2.f * (d3 - d1) - d2 + d4;
    t[4 * s + l] = 2.f * (d1 - d3) - d2 + d4;
    t[5 * s + l] = 4.f * d1 - 5.f * d3 + d5;
  }
}

inline void output_1d(const float* m, float* o, int in_step, int out_step) {
  const int s = in_step * NR, so = out_step * NR;
  for (int l = 0; l < NR; ++l) {
    const float m0 = m[l], m1 = m[s + l], m2 = m[2 * s + l], m3 = m[3 * s + l];
    const float m4 = m[4 * s + l], m5 = m[5 * s + l];
    const float a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;
    o[l] = m0 + a + c;
    o[so + l] = b + 2.f * e;
    o[2 * so + l] = a + 4.f * c;
    o[3 * so + l] = b + 8.f * e + m5;
  }
}

// Adjoint of output_1d: 4 gradients of a tile row/column -> 6 gradients of the points.
inline void output_adjoint_1d(const float* o, float* m, int in_step, int out_step) {
  const int s = in_step * NR, sm = out_step * NR;
  for (int l = 0; l < NR; ++l) {
    const float o0 = o[l], o1 = o[s + l], o2 = o[2 * s + l], o3 = o[3 * s + l];
    const float even = o0 + o2, odd = o1 + o3, even4 = o0 + 4.f * o2, odd8 = 2.f * o1 + 8.f * o3;
    m[l] = o0;
    m[sm + l] = even + odd;
    m[2 * sm + l] = even - odd;
    m[3 * sm + l] = even4 + odd8;
    m[4 * sm + l] = even4 - odd8;
    m[5 * sm + l] = o3;
  }
}

struct TileMap {
  const ConvGeometry& g;
  int64_t tiles_h, tiles_w;
  // Output origin of tile t (over the whole batch): image b, row oy, column ox.
  void origin(int64_t t, int64_t& b, int64_t& oy, int64_t& ox) const {
    b = t / (tiles_h * tiles_w);
    oy = t / tiles_w % tiles_h * kOut;
    ox = t % tiles_w * kOut;
  }
};

// U[xi] = G g G^T for every (co, ci), pre-packed as MR-slivers of a (Co x Ci) matrix per xi.
std::vector<Buffer> transform_weights(const ConvGeometry& g, const float* w) {
  const int64_t pairs = g.c_out * g.c_in;
  std::vector<float> u(pairs * kPoints);  // u[(co * Ci + ci) * 36 + xi]: written contiguously
  parallel_for((pairs + 255) / 256, [&](int64_t block) {
    for (int64_t p = block * 256; p < std::min(pairs, block * 256 + 256); ++p) {
      float gw[kAlpha][3] = {};
      for (int i = 0; i < kAlpha; ++i)
        for (int k = 0; k < 3; ++k)
          for (int j = 0; j < 3; ++j) gw[i][j] += kG[i][k] * w[p * 9 + k * 3 + j];
      for (int i = 0; i < kAlpha; ++i)
        for (int j = 0; j < kAlpha; ++j)
          u[p * kPoints + i * kAlpha + j] = gw[i][0] * kG[j][0] + gw[i][1] * kG[j][1] + gw[i][2] * kG[j][2];
    }
  });
  std::vector<Buffer> packed(kPoints);
  parallel_for(kPoints, [&](int64_t xi) {
    packed[xi] = prepack(u.data() + xi, g.c_in * kPoints, kPoints, g.c_out, g.c_in, MR);
  });
  return packed;
}

// Input transform of tiles [t0, t0 + count): store(xi, ci, sliver, lanes) receives the NR
// transformed values of point xi, channel ci, for the tiles of one sliver.
template <class Store>
void transform_input(const TileMap& map, const float* x, int64_t t0, int64_t count, Store&& store) {
  const ConvGeometry& g = map.g;
  const int64_t slivers = round_up(count, NR) / NR;
  const bool nhwc = g.channels_last != 0;
  const int64_t cs = nhwc ? 1 : g.h * g.w, rs = nhwc ? g.w * g.c_in : g.w, xs = nhwc ? g.c_in : 1;
  for (int64_t s = 0; s < slivers; ++s) {
    int64_t base[NR], iy0[NR], ix0[NR];
    bool valid[NR];
    for (int l = 0; l < NR; ++l) {
      const int64_t t = t0 + s * NR + l;
      valid[l] = s * NR + l < count;
      int64_t b = 0, oy = 0, ox = 0;
      if (valid[l]) map.origin(t, b, oy, ox);
      iy0[l] = oy - g.pad_top;
      ix0[l] = ox - g.pad_left;
      base[l] = g.x_offset(b, 0, 0, 0) + iy0[l] * rs + ix0[l] * xs;
    }
    for (int64_t ci = 0; ci < g.c_in; ++ci) {
      alignas(64) float d[kPoints * NR], tmp[kPoints * NR], out[kPoints * NR];
      for (int l = 0; l < NR; ++l) {
        const float* src = x + base[l] + ci * cs;
        for (int i = 0; i < kAlpha; ++i) {
          const bool row_ok = valid[l] && iy0[l] + i >= 0 && iy0[l] + i < g.h;
          for (int j = 0; j < kAlpha; ++j) {
            const bool ok = row_ok && ix0[l] + j >= 0 && ix0[l] + j < g.w;
            d[(i * kAlpha + j) * NR + l] = ok ? src[i * rs + j * xs] : 0.f;
          }
        }
      }
      for (int j = 0; j < kAlpha; ++j) input_1d(d + j * NR, tmp + j * NR, kAlpha);      // columns
      for (int i = 0; i < kAlpha; ++i) input_1d(tmp + i * kAlpha * NR, out + i * kAlpha * NR, 1);  // rows
      for (int xi = 0; xi < kPoints; ++xi) store(xi, ci, s, out + xi * NR);
    }
  }
}

// Output transform of M (m[(xi * Co + co) * ldm + tile]) into y; false on a non-finite value.
bool transform_output(const TileMap& map, const float* m, int64_t ldm, const float* bias,
                      int64_t t0, int64_t count, float* y) {
  const ConvGeometry& g = map.g;
  bool finite = true;
  for (int64_t s = 0; s * NR < count; ++s) {
    for (int64_t co = 0; co < g.c_out; ++co) {
      alignas(64) float in[kPoints * NR], tmp[kOut * kAlpha * NR], out[kOut * kOut * NR];
      for (int xi = 0; xi < kPoints; ++xi)
        for (int l = 0; l < NR; ++l) in[xi * NR + l] = m[(xi * g.c_out + co) * ldm + s * NR + l];
      for (int j = 0; j < kAlpha; ++j) output_1d(in + j * NR, tmp + j * NR, kAlpha, kAlpha);
      for (int i = 0; i < kOut; ++i) output_1d(tmp + i * kAlpha * NR, out + i * kOut * NR, 1, 1);
      const float b = bias ? bias[co] : 0.f;
      for (int l = 0; l < NR && s * NR + l < count; ++l) {
        int64_t img, oy, ox;
        map.origin(t0 + s * NR + l, img, oy, ox);
        for (int i = 0; i < kOut && oy + i < g.oh; ++i)
          for (int j = 0; j < kOut && ox + j < g.ow; ++j) {
            const float value = out[(i * kOut + j) * NR + l] + b;
            finite = finite && std::isfinite(value);
            y[g.y_offset(img, co, oy + i, ox + j)] = value;
          }
      }
    }
  }
  return finite;
}

// dM = A dY A^T for tiles [t0, t0 + count) of dy: dm[(xi * Co + co) * ldm + tile].
void transform_output_gradient(const TileMap& map, const float* dy, int64_t t0, int64_t count,
                               float* dm, int64_t ldm) {
  const ConvGeometry& g = map.g;
  for (int64_t s = 0; s * NR < count; ++s) {
    for (int64_t co = 0; co < g.c_out; ++co) {
      alignas(64) float d[kOut * kOut * NR], tmp[kAlpha * kOut * NR], out[kPoints * NR];
      for (int l = 0; l < NR; ++l) {
        int64_t img = 0, oy = 0, ox = 0;
        const bool valid = s * NR + l < count;
        if (valid) map.origin(t0 + s * NR + l, img, oy, ox);
        for (int i = 0; i < kOut; ++i)
          for (int j = 0; j < kOut; ++j)
            d[(i * kOut + j) * NR + l] = valid && oy + i < g.oh && ox + j < g.ow
                                             ? dy[g.y_offset(img, co, oy + i, ox + j)] : 0.f;
      }
      for (int j = 0; j < kOut; ++j) output_adjoint_1d(d + j * NR, tmp + j * NR, kOut, kOut);
      for (int i = 0; i < kAlpha; ++i) output_adjoint_1d(tmp + i * kOut * NR, out + i * kAlpha * NR, 1, 1);
      for (int xi = 0; xi < kPoints; ++xi)
        std::memcpy(dm + (xi * g.c_out + co) * ldm + s * NR, out + xi * NR, sizeof(float) * NR);
    }
  }
}

// dw[co][ci] = G^T dU[co][ci] G, dU given as du[(xi * Co + co) * Ci + ci].
bool untransform_weight_gradient(const ConvGeometry& g, const float* du, float* dw) {
  bool finite = true;
  for (int64_t co = 0; co < g.c_out; ++co)
    for (int64_t ci = 0; ci < g.c_in; ++ci) {
      float gu[3][kAlpha] = {};  // G^T dU
      for (int xi = 0; xi < kPoints; ++xi) {
        const float v = du[(xi * g.c_out + co) * g.c_in + ci];
        for (int k = 0; k < 3; ++k) gu[k][xi % kAlpha] += kG[xi / kAlpha][k] * v;
      }
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          float v = 0.f;
          for (int k = 0; k < kAlpha; ++k) v += gu[i][k] * kG[k][j];
          finite = finite && std::isfinite(v);
          dw[((co * g.c_in) + ci) * 9 + i * 3 + j] = v;
        }
    }
  return finite;
}

int64_t tiles_per_item(const ConvGeometry& g) {
  // V and M (or dM) for a chunk of tiles should stay within a few MB of cache.
  const int64_t per_tile_bytes = kPoints * (g.c_in + g.c_out) * 4;
  return std::max<int64_t>(64, std::min<int64_t>(256, (8 << 20) / per_tile_bytes / NR * NR));
}

}  // namespace

bool winograd_applies(const ConvGeometry& g) {
  // Enough tiles to pay for transforming the weights, enough channels to fill the GEMMs.
  const int64_t tiles = g.n * ((g.oh + kOut - 1) / kOut) * ((g.ow + kOut - 1) / kOut);
  return g.kh == 3 && g.kw == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dil_h == 1 &&
         g.dil_w == 1 && g.groups == 1 && g.c_in >= 16 && g.c_out >= 16 && tiles >= 64;
}

bool conv2d_winograd(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                     float* y) {
  const TileMap map{g, (g.oh + kOut - 1) / kOut, (g.ow + kOut - 1) / kOut};
  const int64_t tiles = g.n * map.tiles_h * map.tiles_w;
  const int64_t chunk = tiles_per_item(g);
  const std::vector<Buffer> u = transform_weights(g, w);
  const int64_t items = (tiles + chunk - 1) / chunk;
  std::vector<char> finite(items, 1);
  parallel_for(items, [&](int64_t item) {
    const int64_t t0 = item * chunk, count = std::min(chunk, tiles - t0);
    const int64_t width = round_up(count, NR), slivers = width / NR;
    thread_local Buffer v, m;
    v.resize(kPoints * g.c_in * width);
    m.resize(kPoints * g.c_out * width);
    // V in the GEMM's packed-B layout: v[((xi * slivers + s) * Ci + ci) * NR + lane]
    transform_input(map, x, t0, count, [&](int xi, int64_t ci, int64_t s, const float* lanes) {
      std::memcpy(v.data() + ((xi * slivers + s) * g.c_in + ci) * NR, lanes, sizeof(float) * NR);
    });
    for (int xi = 0; xi < kPoints; ++xi) {
      const float* vx = v.data() + xi * slivers * g.c_in * NR;
      auto weights = [&](int64_t i0, int64_t, int64_t k0, int64_t) {
        return prepacked_panel(u[xi], g.c_in, MR, i0, k0);
      };
      auto tiles_panel = [&](int64_t k0, int64_t, int64_t, int64_t) {
        return Panel{vx + k0 * NR, g.c_in * NR};
      };
      gemm(g.c_out, width, g.c_in, weights, tiles_panel, m.data() + xi * g.c_out * width, width, false);
    }
    finite[item] = transform_output(map, m.data(), width, bias, t0, count, y);
  });
  for (char f : finite)
    if (!f) return false;
  return true;
}

// dU[xi] (Co x Ci) = sum over tiles of dM[xi] (Co x T) V[xi]^T (T x Ci): 36 GEMMs whose
// depth is the tiles, accumulated per thread and reduced in thread order.
bool conv2d_winograd_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                     float* dw) {
  const TileMap map{g, (g.oh + kOut - 1) / kOut, (g.ow + kOut - 1) / kOut};
  const int64_t tiles = g.n * map.tiles_h * map.tiles_w, chunk = tiles_per_item(g);
  const int64_t items = (tiles + chunk - 1) / chunk, size = kPoints * g.c_out * g.c_in;
  const int threads = num_threads();
  std::vector<Buffer> partial(threads, Buffer(size, 0.f));
  parallel_threads(threads, [&](int t, int team) {
    thread_local Buffer v, dm;
    for (int64_t item = items * t / team; item < items * (t + 1) / team; ++item) {
      const int64_t t0 = item * chunk, count = std::min(chunk, tiles - t0), width = round_up(count, NR);
      v.assign(kPoints * g.c_in * width, 0.f);
      dm.resize(kPoints * g.c_out * width);
      transform_input(map, x, t0, count, [&](int xi, int64_t ci, int64_t s, const float* lanes) {
        std::memcpy(v.data() + (xi * g.c_in + ci) * width + s * NR, lanes, sizeof(float) * NR);
      });
      transform_output_gradient(map, dy, t0, count, dm.data(), width);
      for (int xi = 0; xi < kPoints; ++xi) {
        StridedPacker grads{dm.data() + xi * g.c_out * width, width, 1, MR, &scratch_a()};
        StridedPacker inputs{v.data() + xi * g.c_in * width, width, 1, NR, &scratch_b()};
        gemm(g.c_out, g.c_in, width, grads, as_b(inputs), partial[t].data() + xi * g.c_out * g.c_in,
             g.c_in, true);
      }
    }
  });
  for (int t = 1; t < threads; ++t)
    for (int64_t i = 0; i < size; ++i) partial[0][i] += partial[t][i];
  return untransform_weight_gradient(g, partial[0].data(), dw);
}

}  // namespace fastconv::cpu::FASTCONV_ISA
