// A packed single-precision GEMM, C[M x N] (+)= A[M x K] * B[K x N], in the style of BLIS:
// the operands are copied ("packed") into slivers that the micro-kernel streams through,
// MR rows of A or NR columns of B at a time, k-major:
//
//   A sliver:  a[k * MR + r]   (r < MR rows, zero-filled past M)
//   B sliver:  b[k * NR + c]   (c < NR columns, zero-filled past N)
//
// Convolutions never hand this GEMM a matrix: they hand it packers that gather straight
// from the activations (im2col on the fly) or return pre-packed weights, so no im2col
// buffer is ever written. The GEMM itself is single-threaded; callers split the work.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "cpu/simd.h"

namespace fastconv::cpu::FASTCONV_ISA {

// The register tile is MR x NR floats of C, NR / lanes vectors per row (see gemm.cpp):
// AVX-512 8 x 32 (16 zmm accumulators, 2 B vectors: 18 of 32 registers); AVX2 6 x 16 (12 ymm
// accumulators, 2 B vectors, 1 broadcast: 15 of 16); the portable build 6 x 16 as well.
constexpr int64_t MR = gemm_tile(kBuildIsa).mr;
constexpr int64_t NR = gemm_tile(kBuildIsa).nr;
constexpr int64_t KC = 256;  // depth per packed block: a B sliver (16 or 32 KB) stays near L1
constexpr int64_t MC = 120;  // rows per packed A block (a multiple of MR): it stays in L2
static_assert(MC % MR == 0 && NR % 8 == 0, "packers fill whole slivers, 8 columns at a time");

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Packed panels start on a cache line, so no 32-byte vector load ever straddles two lines.
template <class T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, round_up(static_cast<int64_t>(n * sizeof(T)), 64));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const CacheAligned&) const { return true; }
  bool operator!=(const CacheAligned&) const { return false; }
};
using Buffer = std::vector<float, CacheAligned<float>>;

// Packed slivers of a block: sliver s starts at data + s * sliver_stride.
struct Panel {
  const float* data;
  int64_t sliver_stride;
};

// C[mr x nr] (+)= sliver(a) * sliver(b) over depth k, for mr <= MR, nr <= NR; ldc is C's
// row stride (columns are contiguous).
void micro_tile(int64_t k, const float* a, const float* b, float* c, int64_t ldc, int64_t mr,
                int64_t nr, bool accumulate);

// The same tile with A given by row pointers instead of a packed sliver, summed over `taps`
// parts: C[mr x nr] = bias + sum over t < taps of A_t (MR x k) * B_t (k x NR), where row r
// of A_t is the k contiguous floats at rows[t * MR + r] (rows past mr may point anywhere
// readable, zeros say), B_t is the NR-sliver at b[t] and bias (nr floats, or null for 0)
// is added to every row. A convolution's taps are the parts: each row is a pixel's input
// channels at one tap, so nothing is packed. With `stream`, a whole tile is written with
// streaming stores (lanes.h: store_out), each of its rows whole cache lines where C is.
void micro_tile_rows(int64_t taps, int64_t k, const float* const* rows, const float* const* b,
                     const float* bias, float* c, int64_t ldc, int64_t mr, int64_t nr, bool stream);

// The tile with both operands in place, for sums over pixels (weight gradients):
// C[mr x nr] (+)= sum over p < k of a[p * lda + r] * b_rows[p][b_offset + j], i.e. A's
// depth step p is a row of a strided matrix and B's is NR floats wherever pixel p's row is.
// Reads MR floats at every a + p * lda and NR at every b_rows[p] + b_offset.
void micro_tile_cols(int64_t k, const float* a, int64_t lda, const float* const* b_rows,
                     int64_t b_offset, float* c, int64_t ldc, int64_t mr, int64_t nr,
                     bool accumulate);

// Packs rows [i0, i0+m) x depth [k0, k0+k) of the matrix element(i, k) = src[i*rs + k*cs]
// into MR-slivers (for A) -- or, with the roles of rows and columns swapped, columns into
// NR-slivers (for B). `width` is MR or NR.
void pack_strided(const float* src, int64_t rs, int64_t cs, int64_t i0, int64_t m, int64_t k0,
                  int64_t k, int64_t width, float* dst);

// dst[d(p) * width + r] = rows[r][p] for p < k and r < width, zero for r >= n: n <= width
// rows whose depth is contiguous, wherever each row lives, packed into one sliver; width is
// a multiple of 8 (NR). The depth order d is `order` (a permutation of [0, k)), or p itself.
void pack_rows(const float* const* rows, int64_t n, int64_t k, int64_t width, float* dst,
               const int64_t* order = nullptr);

// Pre-packs a whole M x K operand into `packed` (resized), as width-slivers spanning the
// full depth K, so that sliver s, depth block k0 is at data + s*K*width + k0*width.
void prepack(Buffer& packed, const float* src, int64_t rs, int64_t cs, int64_t m, int64_t k,
             int64_t width);

inline Panel prepacked_panel(const Buffer& packed, int64_t depth, int64_t width, int64_t i0,
                             int64_t k0) {
  return {packed.data() + (i0 / width) * depth * width + k0 * width, depth * width};
}

// The blocked loop nest. a_panel(i0, mc, k0, kc) returns the packed A rows [i0, i0+mc) at
// depth [k0, k0+kc) (i0 a multiple of MR); b_panel(k0, kc, j0, nc) likewise for B columns.
template <class APanel, class BPanel>
void gemm(int64_t M, int64_t N, int64_t K, APanel&& a_panel, BPanel&& b_panel, float* c,
          int64_t ldc, bool accumulate) {
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    const Panel b = b_panel(k0, kc, int64_t{0}, N);
    for (int64_t i0 = 0; i0 < M; i0 += MC) {
      const int64_t mc = std::min(MC, M - i0);
      const Panel a = a_panel(i0, mc, k0, kc);
      for (int64_t jr = 0; jr < N; jr += NR) {
        const float* bs = b.data + (jr / NR) * b.sliver_stride;
        for (int64_t ir = 0; ir < mc; ir += MR) {
          micro_tile(kc, a.data + (ir / MR) * a.sliver_stride, bs, c + (i0 + ir) * ldc + jr, ldc,
                     std::min(MR, mc - ir), std::min(NR, N - jr), accumulate || k0 > 0);
        }
      }
    }
  }
}

// A core's L2 in bytes, as the OS reports it (1 MiB where it does not): the budget of the
// blocks that kernels keep in cache.
int64_t l2_bytes();

// Per-thread packing buffers, reused across calls (OpenMP keeps its threads alive).
Buffer& scratch_a();
Buffer& scratch_b();

// `threads` buffers of `size` floats for per-thread partial sums, owned by the calling
// thread and reused from call to call: a gradient's partials can be megabytes, and fresh
// pages would cost a page fault each on first touch. partial_buffers leaves their contents
// as they were, for a caller whose threads each write theirs in full.
std::vector<Buffer>& partial_buffers(int threads, int64_t size);
std::vector<Buffer>& zeroed_partials(int threads, int64_t size);

// Packer for an operand held as a strided matrix: rows [i0, i0+m) at depth [k0, k0+k).
struct StridedPacker {
  const float* src;
  int64_t rs, cs, width;
  Buffer* buffer;
  Panel operator()(int64_t i0, int64_t m, int64_t k0, int64_t k) const {
    buffer->resize(round_up(m, width) * k);
    pack_strided(src, rs, cs, i0, m, k0, k, width, buffer->data());
    return {buffer->data(), k * width};
  }
};

// The B-side view of a packer: gemm asks B for (k0, kc, j0, nc), packers take (j0, nc, k0, kc).
template <class Packer>
auto as_b(Packer& p) {
  return [&p](int64_t k0, int64_t kc, int64_t j0, int64_t nc) { return p(j0, nc, k0, kc); };
}

}  // namespace fastconv::cpu::FASTCONV_ISA
