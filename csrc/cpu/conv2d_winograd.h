// Winograd F(4x4, 3x3) convolution (conv2d_winograd.cpp), used by conv2d.cpp where it applies.
#pragma once
#include "geometry.h"

namespace fastconv::cpu {
bool winograd_enabled();  // fastconv._cpu.set_winograd(); defined in bindings.cpp
}

namespace fastconv::cpu::FASTCONV_ISA {
// 3x3, stride 1, dilation 1, one group, at least 16 channels in and out.
bool winograd_applies(const ConvGeometry& g);
// Computes y; returns false if any output is non-finite (the caller then recomputes y
// directly, so that NaN/Inf propagate exactly as in the direct convolution).
bool conv2d_winograd(const ConvGeometry& g, const float* x, const float* w, const float* bias,
                     float* y);
// Weight gradient by the same transforms; false if any gradient is non-finite.
bool conv2d_winograd_backward_weight(const ConvGeometry& g, const float* dy, const float* x,
                                     float* dw);
}  // namespace fastconv::cpu::FASTCONV_ISA
