// The convolution algorithm selector (see conv2d_algorithm.h).
#include "cpu/conv2d_algorithm.h"

#include <algorithm>

namespace fastconv::cpu {
namespace {

bool is_depthwise(const ConvGeometry& g) { return g.groups > 1 && g.groups == g.c_in; }

// Winograd applies to stride-1, undilated, ungrouped layers: F(4x4, 3x3) or F(3x3, 3x3) to
// 3x3 kernels, F(2x2, 5x5) to 5x5 ones. It needs enough tiles to pay for transforming the
// weights and enough channels to fill the GEMMs. A map that is not a whole number of tiles
// leaves outputs of its last tiles unused; the forward still wins there where the direct
// GEMM is slow to begin with (AVX-512's 16-wide tiles over few pixels, the portable build)
// but not against AVX2's. The weight gradient's GEMMs have the tiles as their depth: from
// 64 tiles on, even a wide layer on a small batch of 7x7 maps (128 tiles for 512 channels)
// measured at least as fast as the direct GEMM.
bool winograd_applies(const ConvGeometry& g, Direction d, int64_t tile, Isa isa) {
  const int64_t tiles = g.n * ((g.oh + tile - 1) / tile) * ((g.ow + tile - 1) / tile);
  const bool partial_tiles = d == Direction::forward && isa != Isa::avx2;
  const int64_t smallest_map = partial_tiles ? std::min<int64_t>(3, tile) : tile;
  return d != Direction::backward_input && g.stride_h == 1 && g.stride_w == 1 && g.dil_h == 1 &&
         g.dil_w == 1 && g.groups == 1 && g.c_in >= 16 && g.c_out >= 16 && tiles >= 64 &&
         g.oh >= smallest_map && g.ow >= smallest_map;
}

// Transform points per image of F(tile x tile, 3x3), whose patches are (tile + 2)^2: each
// costs one multiply per channel pair in the GEMMs and its share of the transforms.
int64_t winograd_points(const ConvGeometry& g, int64_t tile) {
  return (g.oh + tile - 1) / tile * ((g.ow + tile - 1) / tile) * (tile + 2) * (tile + 2);
}

}  // namespace

const char* algorithm_name(Algorithm a) {
  switch (a) {
    case Algorithm::winograd_f4x3:
      return "winograd_f4x3";
    case Algorithm::winograd_f3x3:
      return "winograd_f3x3";
    case Algorithm::winograd_f2x5:
      return "winograd_f2x5";
    case Algorithm::gemm_nchw:
      return "gemm_nchw";
    case Algorithm::gemm_nhwc:
      return "gemm_nhwc";
    case Algorithm::gemm_nhwc_packed:
      return "gemm_nhwc_packed";
    case Algorithm::backward_input_as_forward:
      return "backward_input_as_forward";
    case Algorithm::col2im_nchw:
      return "col2im_nchw";
    case Algorithm::col2im_nhwc:
      return "col2im_nhwc";
    case Algorithm::direct_nhwc:
      return "direct_nhwc";
    case Algorithm::depthwise_nchw:
      return "depthwise_nchw";
    case Algorithm::depthwise_nhwc:
      return "depthwise_nhwc";
  }
  return "unknown";
}

bool parse_direction(const std::string& name, Direction& d) {
  if (name == "forward")
    d = Direction::forward;
  else if (name == "backward_input")
    d = Direction::backward_input;
  else if (name == "backward_weight")
    d = Direction::backward_weight;
  else
    return false;
  return true;
}

Algorithm select_direct_conv_algorithm(const ConvGeometry& g, Direction d, Isa isa) {
  const bool nhwc = g.channels_last != 0;
  if (is_depthwise(g)) return nhwc ? Algorithm::depthwise_nhwc : Algorithm::depthwise_nchw;
  // Few input channels (a first layer over RGB): each tap of the GEMMs' depth would be a
  // few floats long and their tiles mostly empty; the direct kernels' registers run along
  // the output channels instead, for every pass.
  if (nhwc && g.groups == 1 && g.c_in < 16) return Algorithm::direct_nhwc;
  // The in-place weight gradient reads NR input channels of one tap per tile column block,
  // or half of them in a tap's last block.
  const int64_t nr = gemm_tile(isa).nr, last_block = g.cin_per_group() % nr;
  if (d == Direction::backward_weight && nhwc && last_block != 0 && last_block != nr / 2)
    return Algorithm::gemm_nhwc_packed;
  if (d == Direction::backward_input) {
    // The transposed forward packs dy once per input channel group; with few input channels
    // col2im, which packs dy once in all, is cheaper.
    if (g.stride_h == 1 && g.stride_w == 1 && g.cin_per_group() >= 16)
      return Algorithm::backward_input_as_forward;
    return nhwc ? Algorithm::col2im_nhwc : Algorithm::col2im_nchw;
  }
  return nhwc ? Algorithm::gemm_nhwc : Algorithm::gemm_nchw;
}

Algorithm select_conv_algorithm(const ConvGeometry& g, Direction d, Isa isa) {
  if (winograd_enabled() && g.kh == 3 && g.kw == 3) {
    const bool f3x3 = winograd_points(g, 3) < winograd_points(g, 4);
    if (winograd_applies(g, d, f3x3 ? 3 : 4, isa))
      return f3x3 ? Algorithm::winograd_f3x3 : Algorithm::winograd_f4x3;
  }
  if (winograd_enabled() && g.kh == 5 && g.kw == 5 && winograd_applies(g, d, 2, isa))
    return Algorithm::winograd_f2x5;
  return select_direct_conv_algorithm(g, d, isa);
}

}  // namespace fastconv::cpu
