// The tiled GEMM core shared by conv2d forward, backward-input and backward-weight.
//
// Each convolution direction is a GEMM C[m, n] = sum_k A[m, k] * B[k, n] whose operands are
// gathered on the fly from the activations and weights (implicit GEMM: no im2col buffer).
// A Problem type says how. What depends on m, n or k alone is resolved once: row_a(m) and
// col_b(n) per thread for the whole block, k_entry(k) once per k per block (a few threads
// decode the next slices' k into shared memory), so that a(row, entry) / b(col, entry) are
// an add and a bounds check per element. Both return 0 outside the tensor; store(m, n, ...)
// writes one result.
//
// A block computes a BM x BN tile of C, blockIdx.z = split * groups + group. Per step it
// stages BK-deep slices of A and B in shared memory (double-buffered: the next slice is
// fetched into registers while the current one is multiplied) and every thread accumulates
// a TM x TN register tile, strided in two halves so that shared reads are 4-wide and free of
// bank conflicts. Splits cut the k range (for backward-weight, whose k runs over all pixels);
// each split stores its own partial tile.
#pragma once
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"

namespace fastconv::FASTCONV_CUDA_NS {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kLoadsA = BM * BK / kThreads, kLoadsB = BN * BK / kThreads;
  static_assert(TM % 2 == 0 && TN % 2 == 0, "register tiles come in two halves");
  static_assert(kThreads % BM == 0 && kThreads % BN == 0 && kThreads % BK == 0,
                "each thread must keep the same m (n) or the same k across its loads");
  static_assert(BM * BK % kThreads == 0 && BN * BK % kThreads == 0, "whole loads per thread");
};
using LargeTile = Tile<128, 128, 8, 8, 8>;  // 256 threads, 64 accumulators each
using SmallTile = Tile<64, 64, 8, 4, 4>;    // 256 threads, for narrow or short GEMMs

// Which tile a GEMM gets: the large one only where it is filled on both sides.
inline bool use_large_tile(int64_t m, int64_t n) { return m >= 128 && n >= 128; }

struct alignas(16) Float4 {
  float v[4];
};

// Reads `count` consecutive floats of a shared-memory row, 4 at a time where possible.
template <int count>
__device__ __forceinline__ void read_fragment(const float* row, float* out) {
  if constexpr (count % 4 == 0) {
#pragma unroll
    for (int i = 0; i < count; i += 4) {
      const Float4 q = *reinterpret_cast<const Float4*>(row + i);
#pragma unroll
      for (int j = 0; j < 4; ++j) out[i + j] = q.v[j];
    }
  } else {
#pragma unroll
    for (int i = 0; i < count; ++i) out[i] = row[i];
  }
}

// Position of load j of thread `tid` inside a (BK x extent) operand slice: consecutive
// threads take consecutive outer indices (m or n) if `outer_fastest`, else consecutive k.
// Written so that the loads of a thread visibly share their k (or outer) index: the compiler
// then decodes each distinct k once per slice for all of them.
template <class T, int extent, bool outer_fastest>
__device__ __forceinline__ void load_position(int tid, int j, int& outer, int& k) {
  if (outer_fastest) {
    outer = tid % extent;
    k = tid / extent + j * (T::kThreads / extent);
  } else {
    k = tid % T::BK;
    outer = tid / T::BK + j * (T::kThreads / T::BK);
  }
}

template <class T, class P>
__global__ void __launch_bounds__(T::kThreads) implicit_gemm_kernel(const P p, int64_t k_chunk) {
  constexpr int BM = T::BM, BN = T::BN, BK = T::BK, TM = T::TM, TN = T::TN;
  // Rows padded by 4 floats: threads storing consecutive k of one column hit different banks,
  // and rows stay 16-byte aligned for the 4-wide reads.
  struct alignas(16) Slices {
    float a[2][BK][BM + 4];               // [buffer][k][m]
    float b[2][BK][BN + 4];               // [buffer][k][n]
    typename P::KEntry k_entries[2][BK];  // decoded k of slice s in [s % 2]
  };
  __shared__ Slices slices;
  auto& a_tile = slices.a;
  auto& b_tile = slices.b;

  const int tid = static_cast<int>(threadIdx.x);
  const int group = static_cast<int>(blockIdx.z % p.groups);
  const int64_t split = blockIdx.z / p.groups;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM,
                n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t k_begin = split * k_chunk;
  const int64_t k_end = k_begin + k_chunk < p.k ? k_begin + k_chunk : p.k;

  // What each thread loads: its rows of A and columns of B, resolved once.
  typename P::RowA rows[T::kLoadsA];
  typename P::ColB cols[T::kLoadsB];
  int a_outer[T::kLoadsA], a_k[T::kLoadsA], b_outer[T::kLoadsB], b_k[T::kLoadsB];
#pragma unroll
  for (int j = 0; j < T::kLoadsA; ++j) {
    load_position<T, BM, P::kAByM>(tid, j, a_outer[j], a_k[j]);
    rows[j] = p.row_a(m0 + a_outer[j], group);
  }
#pragma unroll
  for (int j = 0; j < T::kLoadsB; ++j) {
    load_position<T, BN, P::kBByN>(tid, j, b_outer[j], b_k[j]);
    cols[j] = p.col_b(n0 + b_outer[j], group);
  }

  // Slice s covers k in [k_begin + s*BK, k_begin + (s+1)*BK).
  auto decode = [&](int64_t slice) {
    const int64_t k = k_begin + slice * BK + tid;
    if (tid < BK && k < k_end) slices.k_entries[slice & 1][tid] = p.k_entry(k, group);
  };
  float staged_a[T::kLoadsA], staged_b[T::kLoadsB];
  auto fetch = [&](int64_t slice) {
    const typename P::KEntry* entries = slices.k_entries[slice & 1];
    const int64_t k0 = k_begin + slice * BK;
#pragma unroll
    for (int j = 0; j < T::kLoadsA; ++j)
      staged_a[j] = k0 + a_k[j] < k_end ? p.a(rows[j], entries[a_k[j]], group) : 0.f;
#pragma unroll
    for (int j = 0; j < T::kLoadsB; ++j)
      staged_b[j] = k0 + b_k[j] < k_end ? p.b(cols[j], entries[b_k[j]], group) : 0.f;
  };
  auto stash = [&](int buffer) {
#pragma unroll
    for (int j = 0; j < T::kLoadsA; ++j) a_tile[buffer][a_k[j]][a_outer[j]] = staged_a[j];
#pragma unroll
    for (int j = 0; j < T::kLoadsB; ++j) b_tile[buffer][b_k[j]][b_outer[j]] = staged_b[j];
  };

  // The thread's register tile: rows half*BM/2 + ty*TM/2 + i, columns likewise with tx.
  // Threads next to each other differ in m where stores are contiguous in m, else in n.
  constexpr int kRowThreads = BM / TM, kColThreads = BN / TN;
  const int ty = P::kStoreByM ? tid % kRowThreads : tid / kColThreads;
  const int tx = P::kStoreByM ? tid / kRowThreads : tid % kColThreads;
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  const int64_t steps = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;
  decode(0);
  if (steps > 1) decode(1);
  __syncthreads();
  if (steps > 0) {
    fetch(0);
    stash(0);
  }
  __syncthreads();
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = static_cast<int>(step & 1);
    const bool more = step + 1 < steps;  // the same for every thread of the block
    if (more) fetch(step + 1);           // its k entries were decoded before the last barrier
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
      read_fragment<TM / 2>(&a_tile[buffer][kk][ty * (TM / 2)], a);
      read_fragment<TM / 2>(&a_tile[buffer][kk][BM / 2 + ty * (TM / 2)], a + TM / 2);
      read_fragment<TN / 2>(&b_tile[buffer][kk][tx * (TN / 2)], b);
      read_fragment<TN / 2>(&b_tile[buffer][kk][BN / 2 + tx * (TN / 2)], b + TN / 2);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // The other tile buffer, and the k entries of slice `step`, were last read in the
    // previous step, before its closing barrier.
    if (more) stash(buffer ^ 1);
    if (step + 2 < steps) decode(step + 2);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + (i < TM / 2 ? 0 : BM / 2) + ty * (TM / 2) + i % (TM / 2);
    if (m >= p.m) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + (j < TN / 2 ? 0 : BN / 2) + tx * (TN / 2) + j % (TN / 2);
      if (n < p.n) p.store(m, n, group, split, acc[i][j]);
    }
  }
}

// k-chunk length when the k range is cut into (at most) `splits` chunks of whole slices;
// ceil_div(k, chunk) is the number of splits actually used.
constexpr int kSliceDepth = LargeTile::BK;
static_assert(SmallTile::BK == kSliceDepth, "both tiles step k alike");
inline int64_t split_chunk(int64_t k, int64_t splits) {
  return ceil_div(ceil_div(k, splits), kSliceDepth) * kSliceDepth;
}

// Runs problem p as a grid of tiles, its k range cut into chunks of k_chunk.
template <class P>
void run_implicit_gemm(const P& p, int64_t k_chunk, Stream stream, const char* name) {
  auto launch = [&](auto tile) {
    using T = decltype(tile);
    const dim3 grid(static_cast<unsigned>(ceil_div(p.m, T::BM)),
                    static_cast<unsigned>(ceil_div(p.n, T::BN)),
                    static_cast<unsigned>(ceil_div(p.k, k_chunk) * p.groups));
    if (grid.y > 65535 || grid.z > 65535)
      throw std::invalid_argument(std::string(name) +
                                  ": too many output channels or groups "
                                  "for one launch");
    auto* kernel = &implicit_gemm_kernel<T, P>;
    FC_LAUNCH(kernel, grid, dim3(T::kThreads), stream)(p, k_chunk);
  };
  if (use_large_tile(p.m, p.n))
    launch(LargeTile{});
  else
    launch(SmallTile{});
  check_launch(name);
}

}  // namespace fastconv::FASTCONV_CUDA_NS
