// Batch normalisation over one channel axis, training and inference mode, with an optional
// fused activation (ReLU or GELU); the maths shared with the CUDA kernels is in
// batch_norm_math.h.
//
// The array is viewed as (outer, channels, inner): NHWC is (N*H*W, C, 1), NCHW (N, C, H*W),
// a Dense activation (N, C, 1). Forward is three passes (the mean, the sums of (x - mean)^2,
// then the affine map and the activation); backward is two (sums of dz and dz * (x - mean),
// then dx), recomputing the activation's input from x rather than storing it. Sums are
// taken in float over short runs and added into double per thread, then the threads'
// partials are added in thread order, so a result does not depend on scheduling. The
// element loops carry `ivdep`: the callers' many input pointers would otherwise exceed
// GCC's run-time alias checks, and with a fused GELU the loops would then run scalar
// (bench/results/cpu.md has the batch-norm rows).
#include <algorithm>
#include <vector>

#include "batch_norm_math.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace fastconv::cpu::FASTCONV_ISA {
namespace {

constexpr int64_t kRowBlock = 64;         // NHWC rows summed in float before going into double
constexpr int64_t kChannelTile = 32;      // NHWC channels whose sums stay in registers
constexpr int64_t kLanes = 8;             // independent float partial sums along a plane
constexpr int64_t kApplyChunk = 1 << 15;  // elements per work item of an element-wise pass

// out[c] = sum of first(c, i), out[C + c] = sum of second(c, i) over every element i of
// channel c; terms(c, i, first, second) adds its two terms into first and second.
template <class Terms>
void channel_sums(const NormGeometry& s, Terms terms, double* out) {
  const int64_t channels = s.channels;
  const int threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), s.outer)));
  std::vector<std::vector<double>> partial(threads, std::vector<double>(2 * channels, 0.0));
  parallel_threads(threads, [&](int t, int nt) {
    const int64_t o0 = s.outer * t / nt, o1 = s.outer * (t + 1) / nt;
    double* acc = partial[t].data();
    if (s.inner == 1) {
      // A tile of whole registers keeps its sums in registers across the rows; the last,
      // narrower tile keeps them in memory.
      const auto tile = [&](int64_t ob, int64_t c0, auto width) {
        float f[kChannelTile] = {}, g[kChannelTile] = {};
        for (int64_t o = ob; o < std::min(ob + kRowBlock, o1); ++o)
#pragma GCC ivdep
          for (int64_t k = 0; k < width; ++k) terms(c0 + k, o * channels + c0 + k, f[k], g[k]);
        for (int64_t k = 0; k < width; ++k) {
          acc[c0 + k] += f[k];
          acc[channels + c0 + k] += g[k];
        }
      };
      for (int64_t ob = o0; ob < o1; ob += kRowBlock)
        for (int64_t c0 = 0; c0 < channels; c0 += kChannelTile) {
          if (channels - c0 >= kChannelTile)
            tile(ob, c0, std::integral_constant<int64_t, kChannelTile>{});
          else
            tile(ob, c0, channels - c0);
        }
    } else {
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t base = (o * channels + c) * s.inner;
          float f[kLanes] = {}, g[kLanes] = {};
          int64_t i = 0;
          for (; i + kLanes <= s.inner; i += kLanes)
#pragma GCC ivdep
            for (int64_t l = 0; l < kLanes; ++l) terms(c, base + i + l, f[l], g[l]);
          for (; i < s.inner; ++i) terms(c, base + i, f[0], g[0]);
          for (int64_t l = 0; l < kLanes; ++l) {
            acc[c] += f[l];
            acc[channels + c] += g[l];
          }
        }
    }
  });
  std::fill(out, out + 2 * channels, 0.0);
  for (const auto& p : partial)
    for (int64_t k = 0; k < 2 * channels; ++k) out[k] += p[k];
}

// map(c, i) for every element, in chunks spread over the threads.
template <class Map>
void for_each_element(const NormGeometry& s, Map map) {
  const int64_t total = s.size();
  const int64_t per_row = s.channels * s.inner;
  parallel_runs(total, kApplyChunk, [&](int64_t begin, int64_t end) {
    if (s.inner == 1) {
      for (int64_t i = begin; i < end;) {  // whole rows of channels where possible
        const int64_t c0 = i % per_row, run = std::min(end - i, per_row - c0);
#pragma GCC ivdep
        for (int64_t c = 0; c < run; ++c) map(c0 + c, i + c);
        i += run;
      }
    } else {
      for (int64_t i = begin; i < end;) {
        const int64_t c = i / s.inner % s.channels;
        const int64_t run = std::min(end - i, s.inner - i % s.inner);
#pragma GCC ivdep
        for (int64_t k = 0; k < run; ++k) map(c, i + k);
        i += run;
      }
    }
  });
}

// y = a * x + b per channel (affine_coefficients).
struct Affine {
  std::vector<float> a, b;
};

Affine affine(int64_t channels, const float* mean, const float* var, const float* gamma,
              const float* beta, float eps) {
  Affine f{std::vector<float>(channels), std::vector<float>(channels)};
  for (int64_t c = 0; c < channels; ++c)
    affine_coefficients(c, mean, var, gamma, beta, eps, f.a[c], f.b[c]);
  return f;
}

void apply(const NormGeometry& s, const float* x, const Affine& f, Activation act, float* y) {
  const float* __restrict a = f.a.data();
  const float* __restrict b = f.b.data();
  with_activation(act, [&](auto kind) {
    for_each_element(s, [&](int64_t c, int64_t i) {
      y[i] = activate<decltype(kind)::value>(x[i] * a[c] + b[c]);
    });
  });
}

}  // namespace

void batch_norm_forward(const NormGeometry& s, const float* x, const float* gamma,
                        const float* beta, float* y, float* mean, float* var) {
  const int64_t channels = s.channels;
  const double count = static_cast<double>(s.outer * s.inner);
  std::vector<float> pivot(channels);
  std::vector<double> sums(2 * channels);
  for (int64_t c = 0; c < channels; ++c) pivot[c] = x[c * s.inner];  // an element of channel c
  const float* __restrict p = pivot.data();
  channel_sums(s, [&](int64_t c, int64_t i, float& f, float&) { f += x[i] - p[c]; }, sums.data());
  for (int64_t c = 0; c < channels; ++c) pivot[c] = moved_pivot(pivot[c], sums[c], count);
  channel_sums(
      s,
      [&](int64_t c, int64_t i, float& f, float& g) {
        const float d = x[i] - p[c];
        f += d;
        g += d * d;
      },
      sums.data());
  for (int64_t c = 0; c < channels; ++c)
    channel_statistics(pivot[c], sums[c], sums[channels + c], count, mean[c], var[c]);
  apply(s, x, affine(channels, mean, var, gamma, beta, s.epsilon()), s.act(), y);
}

void batch_norm_inference(const NormGeometry& s, const float* x, const float* mean,
                          const float* var, const float* gamma, const float* beta, float* y) {
  apply(s, x, affine(s.channels, mean, var, gamma, beta, s.epsilon()), s.act(), y);
}

namespace {

// dz: the gradient at the normalised output z = a * x + b, i.e. dy through the activation
template <Activation act>
void backward(const NormGeometry& s, const float* __restrict dy, const float* __restrict x,
              const float* __restrict mean, const float* var, const float* gamma, const float* beta,
              float eps, float* __restrict dx, float* dgamma, float* dbeta) {
  const int64_t channels = s.channels;
  const double count = static_cast<double>(s.outer * s.inner);
  const Affine f = affine(channels, mean, var, gamma, beta, eps);
  const float* __restrict fa = f.a.data();
  const float* __restrict fb = f.b.data();
  auto dz = [&](int64_t c, int64_t i) {
    return act == Activation::none ? dy[i] : activation_backward<act>(x[i] * fa[c] + fb[c], dy[i]);
  };
  // Through an activation, dz costs more than a store and a load (GELU's erf and exp), so the
  // sums pass keeps it in dx for the dx pass.
  const auto sum_terms = [&](auto keep_dz) {
    return [&, keep_dz](int64_t c, int64_t i, float& sum_dz, float& sum_dz_x) {
      const float d = dz(c, i);
      if constexpr (decltype(keep_dz)::value) dx[i] = d;
      sum_dz += d;
      sum_dz_x += d * (x[i] - mean[c]);
    };
  };
  constexpr bool kKeepsDz = act != Activation::none;
  std::vector<double> sums(2 * channels);
  if (kKeepsDz && dx)
    channel_sums(s, sum_terms(std::true_type{}), sums.data());
  else
    channel_sums(s, sum_terms(std::false_type{}), sums.data());
  std::vector<float> k_dz(channels), k_x(channels), k_0(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const BackwardCoefficients k =
        backward_coefficients(c, sums[c], sums[channels + c], mean, var, gamma, eps, count);
    dgamma[c] = k.dgamma;
    dbeta[c] = k.dbeta;
    k_dz[c] = k.k_dz;
    k_x[c] = k.k_x;
    k_0[c] = k.k_0;
  }
  if (!dx) return;
  const float* __restrict a = k_dz.data();
  const float* __restrict b = k_x.data();
  const float* __restrict z = k_0.data();
  for_each_element(s, [&](int64_t c, int64_t i) {
    dx[i] = a[c] * (kKeepsDz ? dx[i] : dy[i]) + b[c] * x[i] + z[c];
  });
}

}  // namespace

void batch_norm_backward(const NormGeometry& s, const float* dy, const float* x, const float* mean,
                         const float* var, const float* gamma, const float* beta, float* dx,
                         float* dgamma, float* dbeta) {
  with_activation(s.act(), [&](auto kind) {
    backward<decltype(kind)::value>(s, dy, x, mean, var, gamma, beta, s.epsilon(), dx, dgamma,
                                    dbeta);
  });
}

}  // namespace fastconv::cpu::FASTCONV_ISA
