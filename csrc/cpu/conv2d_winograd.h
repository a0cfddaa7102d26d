// Winograd convolution (conv2d_winograd.cpp), used by conv2d.cpp where
// select_conv_algorithm (conv2d_algorithm.h) picks it and names the variant: F(4x4, 3x3) or
// F(3x3, 3x3) for 3x3 kernels and F(2x2, 5x5) for 5x5 ones, stride 1, dilation 1, one group.
#pragma once
#include "cpu/conv2d_algorithm.h"
#include "geometry.h"

namespace fastconv::cpu::FASTCONV_ISA {
// Computes y; returns false if any output is non-finite (the caller then recomputes y
// directly, so that NaN/Inf propagate exactly as in the direct convolution).
bool conv2d_winograd(Algorithm a, const ConvGeometry& g, const float* x, const float* w,
                     const float* bias, float* y);
// Weight gradient by the same transforms; false if any gradient is non-finite.
bool conv2d_winograd_backward_weight(Algorithm a, const ConvGeometry& g, const float* dy,
                                     const float* x, float* dw);
}  // namespace fastconv::cpu::FASTCONV_ISA
