// An 8x8 float transpose, in registers where AVX2 is on: the block is given as row pointers,
// so its rows may come from anywhere (gathered pixels, strided matrix rows).
#pragma once
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fastconv::cpu::FASTCONV_ISA {

// dst[j][k] = src[k][j] for an 8x8 block given as row pointers.
inline void transpose8(const float* const (&src)[8], float* const (&dst)[8]) {
#if defined(__AVX2__)
  __m256 r[8], t[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src[k]);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    r[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(dst[k], _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
    _mm256_storeu_ps(dst[k + 4], _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
  }
#else
  for (int j = 0; j < 8; ++j)
    for (int k = 0; k < 8; ++k) dst[j][k] = src[k][j];
#endif
}

}  // namespace fastconv::cpu::FASTCONV_ISA
