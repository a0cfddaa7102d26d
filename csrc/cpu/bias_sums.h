// The bias gradient of an NHWC layer, dbias[c] = the sum of dy[..., c] over every pixel, as
// its threads add up blocks of dy's pixels: bias_backward on its own, or a weight gradient
// that reads every pixel of dy anyway and so saves bias_backward's pass over it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

// In the build's namespace, as every header with code compiled per ISA: an inline member in a
// shared namespace would be one symbol, and the linker would hand the generic build the
// AVX-512 build's instructions.
namespace fastconv::cpu::FASTCONV_ISA {

class BiasSums {
 public:
  BiasSums(int threads, int64_t channels)
      : channels_(channels),
        block_(threads, std::vector<float>(channels)),
        total_(threads, std::vector<double>(channels, 0.0)) {}

  // Thread t adds `pixels` pixels, `stride` floats apart, as one block: float sums within
  // it (a vector loop), double from block to block, so that rounding stays that of a block.
  void add_block(int t, const float* dy, int64_t pixels, int64_t stride) {
    float* sum = block_[t].data();
    std::fill_n(sum, channels_, 0.f);
    for (int64_t p = 0; p < pixels; ++p) {
      const float* row = dy + p * stride;
#pragma omp simd
      for (int64_t c = 0; c < channels_; ++c) sum[c] += row[c];
    }
    for (int64_t c = 0; c < channels_; ++c) total_[t][c] += sum[c];
  }

  // dbias from the threads' totals, summed in thread order (independent of scheduling).
  void finish(float* dbias) const {
    for (int64_t c = 0; c < channels_; ++c) {
      double total = 0.0;
      for (const std::vector<double>& t : total_) total += t[c];
      dbias[c] = static_cast<float>(total);
    }
  }

 private:
  int64_t channels_;
  std::vector<std::vector<float>> block_;
  std::vector<std::vector<double>> total_;
};

}  // namespace fastconv::cpu::FASTCONV_ISA
