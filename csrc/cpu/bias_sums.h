// The bias gradient of an NHWC layer, dbias[c] = the sum of dy[..., c] over every pixel, as
// its threads add up blocks of dy's pixels: bias_backward on its own, or a weight gradient
// that reads every pixel of dy anyway and so saves bias_backward's pass over it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/lanes.h"

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
  // it, in registers along the pixels, double from block to block, so that rounding stays
  // that of a block.
  void add_block(int t, const float* dy, int64_t pixels, int64_t stride) {
    float* sum = block_[t].data();
    const int64_t whole = channels_ / kLanes * kLanes;
    for_lane_groups(
        whole, [&](auto lanes, int64_t c) { column_sums(lanes, dy + c, pixels, stride, sum + c); });
    if (whole < channels_) tail_sums(dy + whole, pixels, stride, channels_ - whole, sum + whole);
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
  template <class V, int K>
  static void column_sums(LaneGroup<V, K> lanes, const float* dy, int64_t pixels, int64_t stride,
                          float* sum) {
    V acc[K] = {};
    for (int64_t p = 0; p < pixels; ++p)
      for (int k = 0; k < K; ++k) acc[k] += load<V>(dy + p * stride + k * lanes.kStep);
    for (int k = 0; k < K; ++k) store(sum + k * lanes.kStep, acc[k]);
  }

  // The last n < kLanes channels: whole vectors, which reach into the floats of the pixels
  // after (sums dropped), then single floats for the last pixels, past which dy may end.
  static void tail_sums(const float* dy, int64_t pixels, int64_t stride, int64_t n, float* sum) {
    const int64_t past = (kLanes - n + stride - 1) / stride;  // pixels a vector reaches past
    const int64_t vectors = std::max<int64_t>(0, pixels - past);
    Lanes acc = {};
    for (int64_t p = 0; p < vectors; ++p) acc += load<Lanes>(dy + p * stride);
    for (int64_t c = 0; c < n; ++c) {
      sum[c] = acc[c];
      for (int64_t p = vectors; p < pixels; ++p) sum[c] += dy[p * stride + c];
    }
  }

  static constexpr int64_t kLanes = LaneGroup<Lanes, 1>::kStep;
  int64_t channels_;
  std::vector<std::vector<float>> block_;
  std::vector<std::vector<double>> total_;
};

}  // namespace fastconv::cpu::FASTCONV_ISA
