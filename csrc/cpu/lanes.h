// Lanes of consecutive channels in GCC vectors, for NHWC kernels that work along the
// channels of a pixel (pooling, depthwise convolution): Lanes is one register (64 bytes with
// AVX-512, 32 with AVX, else 16: SSE, NEON), and a LaneGroup is K of them side by side, K
// independent chains of work; one template serves every width, then single floats cover the
// last C % lanes channels.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fastconv::cpu::FASTCONV_ISA {

#if defined(__AVX512F__)
typedef float Lanes __attribute__((vector_size(64)));
#elif defined(__AVX__)
typedef float Lanes __attribute__((vector_size(32)));
#else
typedef float Lanes __attribute__((vector_size(16)));
#endif

// A tag for K values of type V side by side; the kernels keep them in local arrays, which
// the compiler holds in registers once it unrolls the loops over k.
template <class V, int K>
struct LaneGroup {
  static constexpr int64_t kStep = sizeof(V) / sizeof(float);  // floats per V
  static constexpr int64_t kWidth = K * kStep;                 // floats per group
};

// body(group, c) over channels [0, channels), c advancing by the group's width: groups of
// 8 registers (as many chains as AVX2's 16 registers hold with their temporaries), then 4,
// then (with kPairs) 2, then single registers and floats. kPairs suits a body with much
// work per call besides its loads, which a few channels would otherwise repeat per register.
template <bool kPairs = false, class Body>
inline void for_lane_groups(int64_t channels, Body&& body) {
  int64_t c = 0;
  for (; c + LaneGroup<Lanes, 8>::kWidth <= channels; c += LaneGroup<Lanes, 8>::kWidth)
    body(LaneGroup<Lanes, 8>{}, c);
  if (c + LaneGroup<Lanes, 4>::kWidth <= channels) {
    body(LaneGroup<Lanes, 4>{}, c);
    c += LaneGroup<Lanes, 4>::kWidth;
  }
  if (kPairs && c + LaneGroup<Lanes, 2>::kWidth <= channels) {
    body(LaneGroup<Lanes, 2>{}, c);
    c += LaneGroup<Lanes, 2>::kWidth;
  }
  for (; c + LaneGroup<Lanes, 1>::kWidth <= channels; c += LaneGroup<Lanes, 1>::kWidth)
    body(LaneGroup<Lanes, 1>{}, c);
  for (; c < channels; ++c) body(LaneGroup<float, 1>{}, c);
}

template <class V>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
inline void store(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}
// Whether an output of `floats` floats is written with streaming (non-temporal) stores: from
// 4 MiB up it outgrows the private caches before the next op reads it, and a plain store
// first reads each line it writes, a third of the memory traffic of a copy.
inline bool streams_output(int64_t floats) { return 4 * floats >= int64_t{4} << 20; }

// The same for an output written in runs of whole cache lines: rows of `row` floats (a
// multiple of 16) from a line-aligned `out`, so that no line is half streamed.
inline bool streams_lines(const float* out, int64_t row, int64_t floats) {
  return row % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0 && streams_output(floats);
}

// store(p, v), or with kStream a streaming store where p is aligned to V's size (x86). A
// parallel item that streams ends with stream_fence(), which makes its stores visible to
// the threads that read the output next.
template <bool kStream, class V>
inline void store_out(float* p, V v) {
#if defined(__x86_64__) || defined(_M_X64)
  if (kStream && reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0) {
    if constexpr (sizeof(V) == 64) {
#if defined(__AVX512F__)
      return _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#endif
    } else if constexpr (sizeof(V) == 32) {
#if defined(__AVX__)
      return _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#endif
    } else if constexpr (sizeof(V) == 16) {
      return _mm_stream_ps(p, reinterpret_cast<__m128>(v));
    }
  }
#endif
  store(p, v);
}

// f(std::true_type{}) or f(std::false_type{}) for the runtime choice `stream`: kernels are
// compiled both ways, so the plain-store one carries no test per store.
template <class F>
inline void with_streaming(bool stream, F&& f) {
  if (stream)
    f(std::true_type{});
  else
    f(std::false_type{});
}

inline void stream_fence() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_sfence();
#endif
}

// b > a ? b : a per lane for kind max (b < a ? b : a for min), i.e. a where they are equal
// or either is NaN: one x86 MAXPS / MINPS, where the compares and select the expression
// compiles to cost a chain of mask-register operations in the AVX-512 build.
template <bool kMax, class V>
inline V extreme_or_first(V a, V b) {
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (sizeof(V) == 64) {
#if defined(__AVX512F__)
    const __m512 r = kMax ? _mm512_max_ps(reinterpret_cast<__m512>(b), reinterpret_cast<__m512>(a))
                          : _mm512_min_ps(reinterpret_cast<__m512>(b), reinterpret_cast<__m512>(a));
    return reinterpret_cast<V>(r);
#endif
  } else if constexpr (sizeof(V) == 32) {
#if defined(__AVX__)
    const __m256 r = kMax ? _mm256_max_ps(reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(a))
                          : _mm256_min_ps(reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(a));
    return reinterpret_cast<V>(r);
#endif
  } else if constexpr (sizeof(V) == 16) {
    const __m128 r = kMax ? _mm_max_ps(reinterpret_cast<__m128>(b), reinterpret_cast<__m128>(a))
                          : _mm_min_ps(reinterpret_cast<__m128>(b), reinterpret_cast<__m128>(a));
    return reinterpret_cast<V>(r);
  }
#endif
  return kMax ? (b > a ? b : a) : (b < a ? b : a);
}

// Is any lane of a comparison's result set (a bool for single floats)?
template <class M>
inline bool any_lane(M m) {
  if constexpr (std::is_same_v<M, bool>) {
    return m;
  } else {
    bool any = false;
    for (int64_t i = 0; i < static_cast<int64_t>(sizeof(M) / sizeof(m[0])); ++i) any |= m[i] != 0;
    return any;
  }
}

template <class V>
inline V splat(float f) {
  // Every lane f: f - (+0) is f for every f, -0 included, where V{} + f would turn -0 into
  // +0, and GCC folds the subtraction away into one broadcast. (A loop setting lane by lane
  // compiled, in some callers, to a chain of 16 masked broadcasts.)
  return f - V{};
}

// Small whole numbers (0-255) as bytes, one per lane of V: pooling's saved window winners.
// x86 converts through 32-bit integers with intrinsics: GCC turns a byte-vector conversion
// into one scalar instruction per lane.
template <class V>
inline V load_bytes(const uint8_t* p) {
  constexpr int kLanes = sizeof(V) / sizeof(float);
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (kLanes == 16) {
#if defined(__AVX512F__)
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return reinterpret_cast<V>(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)));
#endif
  } else if constexpr (kLanes == 8) {
#if defined(__AVX2__)
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return reinterpret_cast<V>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
#endif
  } else if constexpr (kLanes == 4) {
    int32_t four;
    std::memcpy(&four, p, sizeof four);
    const __m128i zero = _mm_setzero_si128(), b = _mm_unpacklo_epi8(_mm_cvtsi32_si128(four), zero);
    return reinterpret_cast<V>(_mm_cvtepi32_ps(_mm_unpacklo_epi16(b, zero)));
  }
#endif
  if constexpr (kLanes == 1) {
    return *p;
  } else {
    V v;
    for (int i = 0; i < kLanes; ++i) v[i] = p[i];
    return v;
  }
}

template <class V>
inline void store_bytes(uint8_t* p, V v) {
  constexpr int kLanes = sizeof(V) / sizeof(float);
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (kLanes == 16) {
#if defined(__AVX512F__)
    const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(reinterpret_cast<__m512>(v)));
    return _mm_storeu_si128(reinterpret_cast<__m128i*>(p), b);
#endif
  } else if constexpr (kLanes == 8) {
#if defined(__AVX2__)
    const __m256i i = _mm256_cvttps_epi32(reinterpret_cast<__m256>(v));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    return _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
#endif
  } else if constexpr (kLanes == 4) {
    const __m128i w =
        _mm_packs_epi32(_mm_cvttps_epi32(reinterpret_cast<__m128>(v)), _mm_setzero_si128());
    const int32_t four = _mm_cvtsi128_si32(_mm_packus_epi16(w, w));
    std::memcpy(p, &four, sizeof four);
    return;
  }
#endif
  if constexpr (kLanes == 1) {
    *p = static_cast<uint8_t>(v);
  } else {
    for (int i = 0; i < kLanes; ++i) p[i] = static_cast<uint8_t>(v[i]);
  }
}

}  // namespace fastconv::cpu::FASTCONV_ISA
