// The GEMM micro-kernel and the generic packers (see gemm.h for the packed formats).
#include "cpu/gemm.h"

#include <cstring>

#include "cpu/transpose.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FASTCONV_USE_AVX2 1
#endif

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

#ifdef FASTCONV_USE_AVX2
// 6x16 register tile: 12 accumulators + 2 B vectors + 1 broadcast = 15 of 16 ymm registers.
// Each depth step is 2 loads, 6 broadcasts and 12 FMAs, enough to keep both FMA ports busy.
// The accumulators are named variables, not an array: GCC keeps arrays of vectors in memory.
#define FC_ROW(r, c0, c1)                                \
  {                                                      \
    const __m256 ar = _mm256_broadcast_ss(a + (r));      \
    c0 = _mm256_fmadd_ps(ar, b0, c0);                    \
    c1 = _mm256_fmadd_ps(ar, b1, c1);                    \
  }
#define FC_STORE(r, c0, c1)                                            \
  {                                                                    \
    float* row = c + (r) * ldc;                                        \
    if (accumulate) {                                                  \
      c0 = _mm256_add_ps(c0, _mm256_loadu_ps(row));                    \
      c1 = _mm256_add_ps(c1, _mm256_loadu_ps(row + 8));                \
    }                                                                  \
    _mm256_storeu_ps(row, c0);                                         \
    _mm256_storeu_ps(row + 8, c1);                                     \
  }
void kernel_full(int64_t k, const float* a, const float* b, float* c, int64_t ldc,
                 bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
  for (int64_t p = 0; p < k; ++p, a += MR, b += NR) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    FC_ROW(0, c00, c01) FC_ROW(1, c10, c11) FC_ROW(2, c20, c21)
    FC_ROW(3, c30, c31) FC_ROW(4, c40, c41) FC_ROW(5, c50, c51)
  }
  FC_STORE(0, c00, c01) FC_STORE(1, c10, c11) FC_STORE(2, c20, c21)
  FC_STORE(3, c30, c31) FC_STORE(4, c40, c41) FC_STORE(5, c50, c51)
}
#undef FC_ROW
#undef FC_STORE
#else
// Portable tile: plain loops the compiler vectorises for whatever the baseline ISA is.
void kernel_full(int64_t k, const float* a, const float* b, float* c, int64_t ldc,
                 bool accumulate) {
  float acc[MR][NR] = {};
  for (int64_t p = 0; p < k; ++p, a += MR, b += NR)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}
#endif

}  // namespace

void micro_tile(int64_t k, const float* a, const float* b, float* c, int64_t ldc, int64_t mr,
                int64_t nr, bool accumulate) {
  if (mr == MR && nr == NR) {
    kernel_full(k, a, b, c, ldc, accumulate);
    return;
  }
  // Edge tile: compute the full tile into a local buffer, write back the valid part.
  float tile[MR * NR];
  kernel_full(k, a, b, tile, NR, false);
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; ++j)
      c[r * ldc + j] = accumulate ? c[r * ldc + j] + tile[r * NR + j] : tile[r * NR + j];
}

void pack_rows(const float* const* rows, int64_t n, int64_t k, int64_t width, float* dst) {
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
        to[j] = dst + (p + j) * width + r0;
      }
      transpose8(from, to);
    }
  for (; p < k; ++p)
    for (int64_t r = 0; r < width; ++r) dst[p * width + r] = r < n ? rows[r][p] : 0.f;
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

Buffer prepack(const float* src, int64_t rs, int64_t cs, int64_t m, int64_t k,
               int64_t width) {
  Buffer packed(round_up(m, width) * k);
  pack_strided(src, rs, cs, 0, m, 0, k, width, packed.data());
  return packed;
}

Buffer& scratch_a() {
  thread_local Buffer buffer;
  return buffer;
}

Buffer& scratch_b() {
  thread_local Buffer buffer;
  return buffer;
}

}  // namespace fastconv::cpu::FASTCONV_ISA
