// Shape contracts shared by the CPU kernels, the CUDA kernels and the CUDA CPU harness.
//
// Legend: N batch, C channels, H/W input height/width, OH/OW output height/width,
// KH/KW kernel size, G groups. Activations are NCHW or NHWC (channels_last); weights are
// always (C_out, C_in/G, KH, KW). Every index is 64-bit: a batch of large images passes 2^31
// elements long before any single dimension does.
#pragma once
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(FASTCONV_CUDA_HARNESS)
#define FC_HD __host__ __device__
#else
#define FC_HD
#endif

namespace fastconv {

// Output length of a sliding window; the Python layer has already rejected windows that
// do not fit, so a non-positive result here means a caller bypassed validation.
FC_HD inline int64_t window_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_lo,
                                     int64_t pad_hi, int64_t dilation) {
  return (in + pad_lo + pad_hi - dilation * (k - 1) - 1) / stride + 1;
}

// Outputs o in [lo, hi) whose tap reads a real input cell, i.e. 0 <= o*stride + start < in,
// where start = tap*dilation - pad. Lets inner loops run without bounds checks.
FC_HD inline void valid_outputs(int64_t out, int64_t in, int64_t stride, int64_t start, int64_t& lo,
                                int64_t& hi) {
  lo = start >= 0 ? 0 : (-start + stride - 1) / stride;
  hi = in - 1 - start < 0 ? 0 : (in - 1 - start) / stride + 1;
  if (hi > out) hi = out;
  if (lo > hi) lo = hi;
}

struct ConvGeometry {
  int64_t n, c_in, h, w, c_out, kh, kw, oh, ow;
  int64_t stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups;
  int64_t channels_last;

  // visit(name, field) for every field, named as fastconv._args.ConvGeometry names them:
  // the bindings read a geometry from a Python object's attributes with it.
  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("n", n);
    visit("c_in", c_in);
    visit("h", h);
    visit("w", w);
    visit("c_out", c_out);
    visit("kh", kh);
    visit("kw", kw);
    visit("oh", oh);
    visit("ow", ow);
    visit("stride_h", stride_h);
    visit("stride_w", stride_w);
    visit("pad_top", pad_top);
    visit("pad_left", pad_left);
    visit("dil_h", dil_h);
    visit("dil_w", dil_w);
    visit("groups", groups);
    visit("channels_last", channels_last);
  }
  FC_HD int64_t batch() const { return n; }
  FC_HD int64_t bias_size() const { return c_out; }

  FC_HD int64_t cin_per_group() const { return c_in / groups; }
  FC_HD int64_t cout_per_group() const { return c_out / groups; }
  FC_HD int64_t x_size() const { return n * c_in * h * w; }
  FC_HD int64_t y_size() const { return n * c_out * oh * ow; }
  FC_HD int64_t w_size() const { return c_out * cin_per_group() * kh * kw; }
  // Row/column of the input that output (oy, ox) reads at tap (ky, kx); may be padding.
  FC_HD int64_t in_row(int64_t oy, int64_t ky) const {
    return oy * stride_h - pad_top + ky * dil_h;
  }
  FC_HD int64_t in_col(int64_t ox, int64_t kx) const {
    return ox * stride_w - pad_left + kx * dil_w;
  }
  // Offset of activation element (b, c, y, x) in either layout, with `channels` channels.
  FC_HD static int64_t offset(bool nhwc, int64_t channels, int64_t height, int64_t width, int64_t b,
                              int64_t c, int64_t y, int64_t x) {
    return nhwc ? ((b * height + y) * width + x) * channels + c
                : ((b * channels + c) * height + y) * width + x;
  }
  // The inverse of offset(): element i of an activation, split into (b, c, y, x).
  FC_HD static void split_offset(bool nhwc, int64_t channels, int64_t height, int64_t width,
                                 int64_t i, int64_t& b, int64_t& c, int64_t& y, int64_t& x) {
    if ((i | channels | height | width) < (int64_t{1} << 31)) {  // 32-bit division is faster
      uint32_t rest = static_cast<uint32_t>(i);
      const uint32_t dims[3] = {static_cast<uint32_t>(nhwc ? channels : width),
                                static_cast<uint32_t>(nhwc ? width : height),
                                static_cast<uint32_t>(nhwc ? height : channels)};
      uint32_t parts[3];
      for (int d = 0; d < 3; ++d) {
        const uint32_t q = rest / dims[d];
        parts[d] = rest - q * dims[d];
        rest = q;
      }
      c = nhwc ? parts[0] : parts[2];
      x = nhwc ? parts[1] : parts[0];
      y = nhwc ? parts[2] : parts[1];
      b = rest;
      return;
    }
    if (nhwc) {
      c = i % channels;
      i /= channels;
      x = i % width;
      i /= width;
      y = i % height;
      b = i / height;
    } else {
      x = i % width;
      i /= width;
      y = i % height;
      i /= height;
      c = i % channels;
      b = i / channels;
    }
  }
  FC_HD int64_t x_offset(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return offset(channels_last != 0, c_in, h, w, b, c, y, x);
  }
  FC_HD int64_t y_offset(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return offset(channels_last != 0, c_out, oh, ow, b, c, y, x);
  }
  // Pixel index p = (b*height + y)*width + x of an image batch, split back into (b, y, x).
  FC_HD static void split_pixel(int64_t p, int64_t height, int64_t width, int64_t& b, int64_t& y,
                                int64_t& x) {
    if ((p | height | width) < (int64_t{1} << 31)) {  // usual; 64-bit division is slow on a GPU
      const uint32_t q = static_cast<uint32_t>(p) / static_cast<uint32_t>(width);
      x = static_cast<uint32_t>(p) - q * static_cast<uint32_t>(width);
      b = q / static_cast<uint32_t>(height);
      y = q - static_cast<uint32_t>(b) * static_cast<uint32_t>(height);
      return;
    }
    x = p % width;
    p /= width;
    y = p % height;
    b = p / height;
  }
  // The output row oy whose tap ky reads input row iy, or -1 if none does (the inverse of
  // in_row: iy = oy*stride_h - pad_top + ky*dil_h); likewise out_col for columns.
  FC_HD int64_t out_row(int64_t iy, int64_t ky) const {
    return inverse_tap(iy + pad_top - ky * dil_h, stride_h, oh);
  }
  FC_HD int64_t out_col(int64_t ix, int64_t kx) const {
    return inverse_tap(ix + pad_left - kx * dil_w, stride_w, ow);
  }
  FC_HD static int64_t inverse_tap(int64_t scaled, int64_t stride, int64_t out) {
    if (scaled < 0 || scaled % stride) return -1;
    return scaled / stride < out ? scaled / stride : -1;
  }
};

// A GEMM reduction index k over (channel, ky, kx) of a KH x KW filter, split back into its
// parts. Channels-outer order k = (c*KH + ky)*KW + kx is the weights' own memory order;
// channels-inner order k = (ky*KW + kx)*channels + c follows NHWC activations. 32-bit: a
// filter never holds 2^31 taps, and 64-bit division is slow on a GPU.
FC_HD inline void split_filter_index(int k, int channels, int kw, int taps, bool channels_inner,
                                     int& c, int& ky, int& kx) {
  int tap;
  if (channels_inner) {
    tap = k / channels;
    c = k - tap * channels;
  } else {
    c = k / taps;
    tap = k - c * taps;
  }
  ky = tap / kw;
  kx = tap - ky * kw;
}

enum class PoolKind : int64_t { kMax = 0, kMin = 1, kAvg = 2, kSum = 3 };

// Max and min give each window's gradient to one winning cell; average and sum to every cell.
FC_HD constexpr bool is_extreme(PoolKind kind) {
  return kind == PoolKind::kMax || kind == PoolKind::kMin;
}

// run(std::integral_constant<PoolKind, kind>{}) for `kind`: the pooling kernels are compiled
// once per kind.
template <class Run>
void with_pool_kind(PoolKind kind, Run&& run) {
  switch (kind) {
    case PoolKind::kMax:
      return run(std::integral_constant<PoolKind, PoolKind::kMax>{});
    case PoolKind::kMin:
      return run(std::integral_constant<PoolKind, PoolKind::kMin>{});
    case PoolKind::kAvg:
      return run(std::integral_constant<PoolKind, PoolKind::kAvg>{});
    case PoolKind::kSum:
      return run(std::integral_constant<PoolKind, PoolKind::kSum>{});
  }
}

struct PoolGeometry {
  int64_t n, c, h, w, kh, kw, oh, ow;
  int64_t stride_h, stride_w, pad_top, pad_left;
  int64_t channels_last, kind, count_include_pad;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("n", n);
    visit("c", c);
    visit("h", h);
    visit("w", w);
    visit("kh", kh);
    visit("kw", kw);
    visit("oh", oh);
    visit("ow", ow);
    visit("stride_h", stride_h);
    visit("stride_w", stride_w);
    visit("pad_top", pad_top);
    visit("pad_left", pad_left);
    visit("channels_last", channels_last);
    visit("kind", kind);
    visit("count_include_pad", count_include_pad);
  }
  FC_HD int64_t batch() const { return n; }

  FC_HD int64_t x_size() const { return n * c * h * w; }
  FC_HD int64_t y_size() const { return n * c * oh * ow; }
  FC_HD PoolKind pool_kind() const { return static_cast<PoolKind>(kind); }
  // Whether the forward can save each window's winner in a byte (max/min, <= 256 cells).
  FC_HD bool saves_winners() const { return is_extreme(pool_kind()) && kh * kw <= 256; }
  // Window of output (oy, ox) clipped to the real input: rows [y0, y1), columns [x0, x1).
  FC_HD void window(int64_t oy, int64_t ox, int64_t& y0, int64_t& y1, int64_t& x0,
                    int64_t& x1) const {
    const int64_t ys = oy * stride_h - pad_top, xs = ox * stride_w - pad_left;
    y0 = ys < 0 ? 0 : ys;
    x0 = xs < 0 ? 0 : xs;
    y1 = ys + kh < h ? ys + kh : h;
    x1 = xs + kw < w ? xs + kw : w;
  }
  // Average pooling divides by the real cells, or by the whole window when padding counts
  // (windows never reach past the padding, so that is always KH*KW).
  FC_HD float avg_divisor(int64_t cells) const {
    return static_cast<float>(count_include_pad ? kh * kw : cells);
  }
  FC_HD int64_t offset(int64_t b, int64_t ch, int64_t y, int64_t x, int64_t height,
                       int64_t width) const {
    return ConvGeometry::offset(channels_last != 0, c, height, width, b, ch, y, x);
  }
  // Outputs [lo, hi) along one axis whose window covers input cell `i` (windows are
  // unclipped here; a window covering i always holds it as a real cell).
  FC_HD static void covering_outputs(int64_t i, int64_t k, int64_t stride, int64_t pad, int64_t out,
                                     int64_t& lo, int64_t& hi) {
    const int64_t last = i + pad;  // the window of o covers i iff o*stride <= i+pad < o*stride+k
    lo = last - k + 1 <= 0 ? 0 : (last - k + 1 + stride - 1) / stride;
    hi = last / stride + 1 < out ? last / stride + 1 : out;
  }
  // Does v replace the current winner of a max/min window? Strict comparison keeps the
  // first of equal values; a NaN replaces any number and nothing replaces a NaN. Bitwise,
  // not short-circuit, operators: no branch to mispredict on random data, and T may be a
  // GCC vector of floats as well as a float (the answer is then a lane mask).
  template <class T>
  FC_HD static auto replaces(PoolKind kind, T v, T best) {
    const auto better = kind == PoolKind::kMax ? v > best : v < best;
    return better | ((v != v) & (best == best));
  }
  // Does v hold the value that won its window (equal to it, or both NaN)? By the rule above
  // the winner is the first cell in row-major order that does, so a second pass over the
  // window finds it from the winning value alone.
  template <class T>
  FC_HD static auto holds_winner(T v, T best) {
    return (v == best) | ((v != v) & (best != best));
  }
};

// The activation fused into batch normalisation, applied to its normalised output.
enum class Activation : int64_t { none = 0, relu = 1, gelu = 2 };

// Batch normalisation over one channel axis: the array seen as (outer, channels, inner)
// around that axis (NHWC: (N*H*W, C, 1), NCHW: (N, C, H*W), a Dense activation (N, C, 1)),
// with its epsilon and fused activation.
struct NormGeometry {
  int64_t outer, channels, inner;
  double eps;
  int64_t activation;

  template <class Visit>
  void visit_fields(Visit&& visit) {
    visit("outer", outer);
    visit("channels", channels);
    visit("inner", inner);
    visit("eps", eps);
    visit("activation", activation);
  }
  FC_HD int64_t size() const { return outer * channels * inner; }
  FC_HD int64_t per_channel() const { return outer * inner; }
  FC_HD int64_t channel_size() const { return channels; }
  // Offset of the p-th element of channel c, p = o*inner + i in [0, per_channel()).
  FC_HD int64_t offset(int64_t c, int64_t p) const {
    if ((p | channels | inner) < (int64_t{1} << 31)) {  // 32-bit division is faster on a GPU
      const uint32_t o = static_cast<uint32_t>(p) / static_cast<uint32_t>(inner);
      return (static_cast<int64_t>(o) * channels + c) * inner +
             (static_cast<uint32_t>(p) - o * static_cast<uint32_t>(inner));
    }
    return (p / inner * channels + c) * inner + p % inner;
  }
  // The channel of element i.
  FC_HD int64_t channel(int64_t i) const {
    if ((i | channels | inner) < (int64_t{1} << 31))
      return static_cast<uint32_t>(i) / static_cast<uint32_t>(inner) %
             static_cast<uint32_t>(channels);
    return i / inner % channels;
  }
  FC_HD int64_t batch() const { return outer; }  // never empty: Python rejects empty axes
  FC_HD float epsilon() const { return static_cast<float>(eps); }
  FC_HD Activation act() const { return static_cast<Activation>(activation); }
};

}  // namespace fastconv
