// Which algorithm computes a dense, grouped or depthwise convolution pass: one function
// decides for every pass, layout and instruction set, so the choice can be read (tests,
// fastconv._cpu.conv_algorithm) as well as run. Compiled once, with the baseline flags.
//
// Shapes: ConvGeometry (geometry.h). The choice depends on the geometry, the pass, the ISA
// and fastconv._cpu.set_winograd(), never on the data: non-finite data is handled inside
// the Winograd path, which reruns the pass by the direct algorithm.
#pragma once
#include <string>

#include "cpu/isa.h"
#include "geometry.h"

namespace fastconv::cpu {

enum class Direction { forward, backward_input, backward_weight };

enum class Algorithm {
  winograd_f4x3,              // Winograd F(4x4, 3x3): forward and weight gradient
  winograd_f3x3,              // Winograd F(3x3, 3x3): the same, where it needs fewer points
  winograd_f2x5,              // Winograd F(2x2, 5x5): forward and weight gradient
  gemm_nchw,                  // packed GEMM over im2col gathered on the fly, NCHW
  gemm_nhwc,                  // NHWC implicit GEMM: x's rows read in place at every tap
  gemm_nhwc_packed,           // NHWC weight gradient with x's columns packed (any C_in)
  backward_input_as_forward,  // stride-1 dx as a forward conv with the flipped kernel
  col2im_nchw,                // dx = scatter of W^T dy, NCHW
  col2im_nhwc,                // the same, NHWC
  direct_nhwc,                // NHWC, few input channels: registers along C_out
  depthwise_nchw,             // one filter per channel: memory-bound loops, NCHW
  depthwise_nhwc,             // the same, NHWC
};

const char* algorithm_name(Algorithm a);
bool parse_direction(const std::string& name, Direction& d);

bool winograd_enabled();  // fastconv._cpu.set_winograd(); defined in bindings.cpp

// The algorithm for pass `d` of `g` with the kernels of `isa`.
Algorithm select_conv_algorithm(const ConvGeometry& g, Direction d, Isa isa);
// The same choice with Winograd ruled out: what a Winograd pass falls back to.
Algorithm select_direct_conv_algorithm(const ConvGeometry& g, Direction d, Isa isa);

}  // namespace fastconv::cpu
