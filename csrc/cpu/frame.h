// A convolution's input as its windows see it (conv2d_direct.cpp, depthwise_conv2d.cpp): each
// image `rows` x `cols` pixels of C floats with the layer's padding made real (a copy when
// the layer pads), so that every window lies inside and tap (ky, kx) of a window sits
// tap_offset[ky * KW + kx] floats after the window's first element. Kernels then run over
// pixels at a fixed step without a bounds check.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/gemm.h"
#include "geometry.h"

namespace fastconv::cpu::FASTCONV_ISA {

struct Frame {
  int64_t rows, cols, c;
  int64_t step;  // floats between the windows of neighbouring output pixels of a row
  bool copies;   // whether the layer pads, so that the frame is a zero-padded copy
  std::vector<int64_t> tap_offset;

  explicit Frame(const ConvGeometry& g)
      : rows(std::max(g.h + g.pad_top, (g.oh - 1) * g.stride_h + (g.kh - 1) * g.dil_h + 1)),
        cols(std::max(g.w + g.pad_left, (g.ow - 1) * g.stride_w + (g.kw - 1) * g.dil_w + 1)),
        c(g.c_in),
        step(g.stride_w * g.c_in),
        copies(g.pad_top || g.pad_left || rows > g.h || cols > g.w) {
    for (int64_t ky = 0; ky < g.kh; ++ky)
      for (int64_t kx = 0; kx < g.kw; ++kx)
        tap_offset.push_back((ky * g.dil_h * cols + kx * g.dil_w) * c);
  }
  // Floats from the window of output pixel (oy, 0) to that of (oy + 1, 0).
  int64_t window_row(const ConvGeometry& g) const { return g.stride_h * cols * c; }
};

// The frame rows that output rows [oy0, oy1) of image b read; returns the window of output
// pixel (oy0, 0). Without padding that is x itself, otherwise a copy in `buf` (on a cache
// line, as x's rows are: unaligned vectors would split lines).
inline const float* frame_band(const ConvGeometry& g, const Frame& f, const float* x, int64_t b,
                               int64_t oy0, int64_t oy1, Buffer& buf) {
  const int64_t first = oy0 * g.stride_h, row = f.cols * f.c;
  if (!f.copies) return x + (b * g.h + first) * row;
  const int64_t count = (oy1 - 1 - oy0) * g.stride_h + (g.kh - 1) * g.dil_h + 1;
  buf.resize(count * row);
  // Each float written once: zeros only where the frame pads.
  const int64_t left = g.pad_left * f.c, inside = g.w * g.c_in;
  for (int64_t r = 0; r < count; ++r) {
    float* out = buf.data() + r * row;
    const int64_t iy = first + r - g.pad_top;
    if (iy < 0 || iy >= g.h) {
      std::fill(out, out + row, 0.f);
      continue;
    }
    std::fill(out, out + left, 0.f);
    std::memcpy(out + left, x + (b * g.h + iy) * inside, sizeof(float) * inside);
    std::fill(out + left + inside, out + row, 0.f);
  }
  return buf.data();
}

}  // namespace fastconv::cpu::FASTCONV_ISA
