// The GEMM micro-kernel and the generic packers (see gemm.h for the packed formats).
#include "cpu/gemm.h"

#include <chrono>
#include <cstring>
#include <type_traits>
#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf
#endif

#include "cpu/lanes.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/transpose.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

using V = Simd::V;
constexpr int kCols = NR / Simd::kLanes;  // vectors per tile row
static_assert(NR % Simd::kLanes == 0, "a tile row is whole vectors");

template <int C>
using Tile = V[MR][C];

// The MR x NR register tile: MR * kCols accumulators, kCols B vectors and a broadcast of A
// per row. Each depth step is kCols loads, MR broadcasts and MR * kCols independent FMAs,
// enough to keep both FMA pipes busy through their latency. GCC keeps the arrays in
// registers once the constant-count loops are unrolled and these helpers inlined (no spills
// in the loop: check with -S after changing MR or NR). The helpers take the vectors per row
// C as a parameter: a tile whose columns fit in half of them runs a half-width tile.
//
// acc += A * B over depth k, where a(p, r) is A's element (row r, depth p) and b(p) points
// at B's row p (NR floats, of which the first C vectors are read).
template <int C, class A, class B>
__attribute__((always_inline)) inline void multiply_add(Tile<C>& acc, int64_t k, A a, B b) {
#pragma GCC unroll 4
  for (int64_t p = 0; p < k; ++p) {
    const float* row = b(p);
    V bv[C];
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) bv[j] = Simd::load(row + j * Simd::kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V ar = Simd::splat(a(p, r));
#pragma GCC unroll 4
      for (int j = 0; j < C; ++j) acc[r][j] = Simd::fma(ar, bv[j], acc[r][j]);
    }
  }
}

template <int C>
__attribute__((always_inline)) inline void clear(Tile<C>& acc) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) acc[r][j] = Simd::zero();
}

// C[mr x nr] (+)= the tile's corner. Edge tiles store whole vectors where they can and the
// last, partial one of a row masked, so nothing past C is read or written. A whole tile of
// a large output may be written with streaming stores instead (`stream`).
template <int C>
__attribute__((always_inline)) inline void store(const Tile<C>& acc, float* c, int64_t ldc,
                                                 int64_t mr, int64_t nr, bool accumulate,
                                                 bool stream = false) {
  if (mr == MR && nr == C * Simd::kLanes) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < C; ++j) {
        float* o = c + r * ldc + j * Simd::kLanes;
        if (stream)
          store_out<true>(o, acc[r][j]);
        else
          Simd::store(o, accumulate ? Simd::add(acc[r][j], Simd::load(o)) : acc[r][j]);
      }
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < C; ++j) {
      const int64_t n = std::min<int64_t>(nr - j * Simd::kLanes, Simd::kLanes);
      if (r >= mr || n <= 0) continue;
      float* o = c + r * ldc + j * Simd::kLanes;
      if (n == Simd::kLanes) {
        Simd::store(o, accumulate ? Simd::add(acc[r][j], Simd::load(o)) : acc[r][j]);
        continue;
      }
      const int lanes = static_cast<int>(n);
      Simd::store_part(o, accumulate ? Simd::add(acc[r][j], Simd::load_part(o, lanes)) : acc[r][j],
                       lanes);
    }
}

// f(std::integral_constant<int, C>{}) with C the vectors per row that cover nr columns: all
// kCols, or half of them for a last sliver that holds no more (C_out = 48 is a sliver of 32
// and one of 16), which then costs half the FMAs and loads.
template <class F>
__attribute__((always_inline)) inline void with_columns(int64_t nr, F&& f) {
  constexpr int kHalf = kCols / 2;
  if constexpr (kHalf > 0)
    if (nr <= kHalf * Simd::kLanes) return f(std::integral_constant<int, kHalf>{});
  f(std::integral_constant<int, kCols>{});
}

}  // namespace

void micro_tile(int64_t k, const float* a, const float* b, float* c, int64_t ldc, int64_t mr,
                int64_t nr, bool accumulate) {
  with_columns(
      nr, [&](auto columns) __attribute__((always_inline)) {
        Tile<columns.value> acc;
        clear(acc);
        multiply_add(
            acc, k, [a](int64_t p, int r) { return a[p * MR + r]; },
            [b](int64_t p) { return b + p * NR; });
        store(acc, c, ldc, mr, nr, accumulate);
      });
}

void micro_tile_rows(int64_t taps, int64_t k, const float* const* rows, const float* const* b,
                     const float* bias, float* c, int64_t ldc, int64_t mr, int64_t nr,
                     bool stream) {
  with_columns(
      nr, [&](auto columns) __attribute__((always_inline)) {
        constexpr int C = columns.value;
        Tile<C> acc;
        clear(acc);
        if (bias)  // every row starts from the bias of its columns
#pragma GCC unroll 4
          for (int j = 0; j < C; ++j) {
            const int64_t n = std::min<int64_t>(nr - j * Simd::kLanes, Simd::kLanes);
            const V v = n <= 0 ? Simd::zero()
                        : n == Simd::kLanes
                            ? Simd::load(bias + j * Simd::kLanes)
                            : Simd::load_part(bias + j * Simd::kLanes, static_cast<int>(n));
#pragma GCC unroll 16
            for (int r = 0; r < MR; ++r) acc[r][j] = v;
          }
        for (int64_t t = 0; t < taps; ++t) {
          const float* row[MR];
          for (int r = 0; r < MR; ++r) row[r] = rows[t * MR + r];
          const float* sliver = b[t];
          multiply_add(
              acc, k, [&row](int64_t p, int r) { return row[r][p]; },
              [sliver](int64_t p) { return sliver + p * NR; });
        }
        store(acc, c, ldc, mr, nr, false, stream);
      });
}

void micro_tile_cols(int64_t k, const float* a, int64_t lda, const float* const* b_rows,
                     int64_t b_offset, float* c, int64_t ldc, int64_t mr, int64_t nr,
                     bool accumulate) {
  with_columns(
      nr, [&](auto columns) __attribute__((always_inline)) {
        Tile<columns.value> acc;
        clear(acc);
        multiply_add(
            acc, k, [a, lda](int64_t p, int r) { return a[p * lda + r]; },
            [b_rows, b_offset](int64_t p) { return b_rows[p] + b_offset; });
        store(acc, c, ldc, mr, nr, accumulate);
      });
}

void pack_rows(const float* const* rows, int64_t n, int64_t k, int64_t width, float* dst,
               const int64_t* order) {
  // 8 rows x 8 depths at a time, read as 8-float runs and transposed in registers, instead
  // of gathered one float at a time (the Winograd weight gradient packs as much as it
  // multiplies); rows past n are zeros.
  static const float zeros[8] = {};
  int64_t p = 0;
  for (; p + 8 <= k; p += 8)
    for (int64_t r0 = 0; r0 < width; r0 += 8) {
      const float* from[8];
      float* to[8];
      for (int j = 0; j < 8; ++j) {
        from[j] = r0 + j < n ? rows[r0 + j] + p : zeros;
        to[j] = dst + (order ? order[p + j] : p + j) * width + r0;
      }
      transpose8(from, to);
    }
  for (; p < k; ++p)
    for (int64_t r = 0; r < width; ++r)
      dst[(order ? order[p] : p) * width + r] = r < n ? rows[r][p] : 0.f;
}

void pack_strided(const float* src, int64_t rs, int64_t cs, int64_t i0, int64_t m, int64_t k0,
                  int64_t k, int64_t width, float* dst) {
  for (int64_t s = 0; s < m; s += width, dst += k * width) {
    const int64_t rows = std::min(width, m - s);
    const float* base = src + (i0 + s) * rs + k0 * cs;
    if (cs == 1 && width % 8 == 0) {  // depth contiguous in each row, whole 8-lane groups
      const float* row[std::max(MR, NR)];
      for (int64_t r = 0; r < rows; ++r) row[r] = base + r * rs;
      pack_rows(row, rows, k, width, dst);
      continue;
    }
    // Depth outer, rows inner: every store is contiguous, and the `width` source rows are
    // read side by side, so each stays in cache while the depth advances.
    if (rows < width) std::memset(dst, 0, sizeof(float) * k * width);
    for (int64_t p = 0; p < k; ++p) {
      const float* column = base + p * cs;
      float* d = dst + p * width;
      for (int64_t r = 0; r < rows; ++r) d[r] = column[r * rs];
    }
  }
}

void prepack(Buffer& packed, const float* src, int64_t rs, int64_t cs, int64_t m, int64_t k,
             int64_t width) {
  packed.resize(round_up(m, width) * k);
  float* out = packed.data();
  parallel_for((m + width - 1) / width, [&](int64_t s) {
    pack_strided(src, rs, cs, s * width, std::min(width, m - s * width), 0, k, width,
                 out + s * k * width);
  });
}

double fma_peak_gflops(double seconds) {
  // Independent chains, as many as the register file holds with room to spare: more than
  // FMA latency x FMA pipes, so the loop runs at the FMA throughput.
  constexpr int kChains = Simd::kLanes == 16 ? 24 : 12;
  constexpr int64_t kSteps = 1 << 16;
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = Simd::splat(static_cast<float>(i));
  volatile float seed = 0.999f;  // opaque to the compiler: the loop cannot be folded
  const V scale = Simd::splat(seed), shift = Simd::splat(seed * 1e-3f);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int64_t steps = 0;
  double elapsed = 0;
  do {
    for (int64_t s = 0; s < kSteps; ++s)
#pragma GCC unroll 24
      for (int i = 0; i < kChains; ++i) acc[i] = Simd::fma(acc[i], scale, shift);
    steps += kSteps;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  float sink[Simd::kLanes];
  for (int i = 1; i < kChains; ++i) acc[0] = Simd::add(acc[0], acc[i]);
  Simd::store(sink, acc[0]);
  volatile float keep = sink[0];  // the chains' results are used
  (void)keep;
  return 2.0 * Simd::kLanes * kChains * steps / elapsed * 1e-9;
}

int64_t l2_bytes() {
  static const int64_t bytes = [] {
#ifdef _SC_LEVEL2_CACHE_SIZE
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (reported > 0) return static_cast<int64_t>(reported);
#endif
    return int64_t{1} << 20;
  }();
  return bytes;
}

Buffer& scratch_a() {
  thread_local Buffer buffer;
  return buffer;
}

Buffer& scratch_b() {
  thread_local Buffer buffer;
  return buffer;
}

std::vector<Buffer>& partial_buffers(int threads, int64_t size) {
  thread_local std::vector<Buffer> partials;
  partials.resize(threads);
  for (Buffer& p : partials) p.resize(size);
  return partials;
}

std::vector<Buffer>& zeroed_partials(int threads, int64_t size) {
  std::vector<Buffer>& partials = partial_buffers(threads, size);
  for (Buffer& p : partials) std::fill(p.begin(), p.end(), 0.f);
  return partials;
}

}  // namespace fastconv::cpu::FASTCONV_ISA
