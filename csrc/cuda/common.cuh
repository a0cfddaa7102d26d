// What every .cu file of fastconv includes: the CUDA runtime or the CPU harness, the launch
// macro that works with both, and small device helpers.
#pragma once
#include "cuda/kernels.h"

#ifndef FASTCONV_CUDA_HARNESS
#include <cuda_runtime.h>
// kernel<<<...>>> is not C++; FC_LAUNCH(kernel, grid, block, stream)(args...) is, under both.
#define FC_LAUNCH(kernel, grid, block, stream) \
  kernel<<<(grid), (block), 0, static_cast<cudaStream_t>(stream)>>>
#endif

namespace fastconv::FASTCONV_CUDA_NS {

FC_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises std::runtime_error if the last launch failed (no-op under the harness).
void check_launch(const char* kernel);

// One-thread-per-element kernels: a grid-stride loop over [0, total) with 64-bit indices.
constexpr int kElementThreads = 256;
inline dim3 element_grid(int64_t total) {
  const int64_t blocks = ceil_div(total, kElementThreads);
  return dim3(static_cast<unsigned>(blocks < (1 << 20) ? (blocks > 0 ? blocks : 1) : (1 << 20)));
}
__device__ __forceinline__ int64_t first_element() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t element_step() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Sum of v over the block (blockDim.x a power of two) in a fixed tree order, returned to
// every thread. scratch holds blockDim.x floats; every thread of the block must call this.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const unsigned t = threadIdx.x;
  scratch[t] = v;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) scratch[t] += scratch[t + half];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();  // scratch may be reused right away
  return total;
}

// Chunk length for cutting `pixels` into splits of at least `min_chunk`, one split per block
// row of a grid (gridDim.y <= 65535).
inline int64_t pixel_chunk(int64_t pixels, int64_t min_chunk) {
  const int64_t fit = ceil_div(pixels, 65535);
  return fit > min_chunk ? fit : min_chunk;
}

// Pixels [begin, end) of split s when `pixels` are cut into chunks of `chunk`.
__device__ __forceinline__ void split_range(int64_t s, int64_t chunk, int64_t pixels,
                                            int64_t& begin, int64_t& end) {
  begin = s * chunk;
  end = begin + chunk < pixels ? begin + chunk : pixels;
}

}  // namespace fastconv::FASTCONV_CUDA_NS
