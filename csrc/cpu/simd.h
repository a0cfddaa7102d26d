// Float vectors and the few operations the hand-vectorised kernels need, so that one template
// serves the AVX-512 (16 lanes), AVX2/FMA (8 lanes) and portable (4 lanes, GCC vectors: SSE
// on x86-64, NEON on ARM) builds: Simd is the build's widest, and the AVX-512 build has
// Simd256 too.
//
// Intrinsics rather than GCC vector arithmetic on the x86 builds: `V{} + x` is not a
// broadcast (0 + -0 is +0, so GCC must add), and the FMA must be explicit to be portable.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/isa.h"

namespace fastconv::cpu::FASTCONV_ISA {

// The instruction set this build's code is compiled for.
#if defined(__AVX512F__)
constexpr Isa kBuildIsa = Isa::avx512;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr Isa kBuildIsa = Isa::avx2;
#else
constexpr Isa kBuildIsa = Isa::generic;
#endif

// Accumulators a register tile of the hand-vectorised kernels holds: three quarters of the
// vector registers, the rest for the operands.
#if defined(__AVX512F__)
constexpr int kTileRegisters = 24;  // of 32
#else
constexpr int kTileRegisters = 12;  // of 16
#endif

// Vectors along the channels of a register tile: with kTileRegisters, a tile of
// kTileRegisters / NV pixels (or taps) x NV vectors.
constexpr int kTileVectors = 4;

// f(std::integral_constant<int, NV>{}) for NV = min(vectors, kTileVectors), vectors >= 1: the
// compile-time tile width for a block of channels.
template <class F>
void with_tile_vectors(int64_t vectors, F&& f) {
  switch (vectors) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    default:
      return f(std::integral_constant<int, kTileVectors>{});
  }
}

// tile(std::integral_constant<int, n>{}, i) for tiles [i, i + n) covering [0, count): n = N
// while N fit, then the rest in tiles of N / 2, N / 4, ... 1, each a compile-time size.
template <int N, class Tile>
void in_halving_tiles(int64_t count, Tile&& tile, int64_t first = 0) {
  for (; count >= N; count -= N, first += N) tile(std::integral_constant<int, N>{}, first);
  if constexpr (N > 1)
    if (count > 0) in_halving_tiles<N / 2>(count, tile, first);
}

#if defined(__AVX2__) && defined(__FMA__)
struct Simd256 {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V splat(float f) { return _mm256_set1_ps(f); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  // Through memory rather than VMASKMOVPS, whose stores are slow on AMD cores.
  static V load_part(const float* p, int n) {
    alignas(32) float lanes[kLanes] = {};
    std::memcpy(lanes, p, sizeof(float) * n);
    return _mm256_load_ps(lanes);
  }
  static void store_part(float* p, V v, int n) {
    alignas(32) float lanes[kLanes];
    _mm256_store_ps(lanes, v);
    std::memcpy(p, lanes, sizeof(float) * n);
  }
};
#endif

#if defined(__AVX512F__)
struct Simd512 {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V splat(float f) { return _mm512_set1_ps(f); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  // The first n lanes only (0 <= n <= kLanes); masked lanes are neither read nor written.
  static V load_part(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store_part(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
};
using Simd = Simd512;
#elif defined(__AVX2__) && defined(__FMA__)
using Simd = Simd256;
#else
struct Simd128 {
  typedef float V __attribute__((vector_size(16)));
  static constexpr int kLanes = 4;
  static V zero() { return V{}; }
  static V splat(float f) { return V{f, f, f, f}; }
  static V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V fma(V a, V b, V c) { return a * b + c; }  // contracted where the target has FMA
  static V add(V a, V b) { return a + b; }
  static V load_part(const float* p, int n) {
    V v{};
    std::memcpy(&v, p, sizeof(float) * n);
    return v;
  }
  static void store_part(float* p, V v, int n) { std::memcpy(p, &v, sizeof(float) * n); }
};
using Simd = Simd128;
#endif

// Whether no value is NaN or infinite.
inline bool all_finite(const float* v, int64_t count) {
  float probe = 0.f;  // becomes NaN if any value is NaN or infinite
#pragma omp simd reduction(+ : probe)
  for (int64_t i = 0; i < count; ++i) probe += v[i] * 0.f;
  return probe == 0.f;
}

// Asks for n floats from p on, a cache line at a time: for kernels that multiply a block at
// more bytes a cycle than memory delivers on demand, the next block is fetched meanwhile.
inline void prefetch_floats(const float* p, int64_t n) {
  for (int64_t at = 0; at < n; at += 16) __builtin_prefetch(p + at);
}

}  // namespace fastconv::cpu::FASTCONV_ISA
