// Direct NHWC convolution for layers with few input channels (conv2d_direct.cpp), used by
// conv2d.cpp where select_conv_algorithm (conv2d_algorithm.h) picks direct_nhwc: one group,
// C_in * KH * KW small, any stride, padding and dilation.
#pragma once
#include "cpu/bias_sums.h"
#include "geometry.h"

namespace fastconv::cpu::FASTCONV_ISA {
void conv2d_direct_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                           float* y);
void conv2d_direct_backward_input(const ConvGeometry& g, const float* dy, const float* w,
                                  float* dx);
// With `bias`, the threads also add up every row of dy for the bias gradient.
void conv2d_direct_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                   float* dw, BiasSums* bias);
}  // namespace fastconv::cpu::FASTCONV_ISA
