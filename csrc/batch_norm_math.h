// The maths of batch normalisation that the CPU kernels (cpu/batch_norm.cpp) and the CUDA
// kernels (cuda/batch_norm.cu) share, so that both round alike: the fused activations and the
// per-channel formulas (statistics from sums, the affine map, the backward coefficients).
// Every function is FC_HD: host code for the CPU, device code under nvcc and the harness.
//
// The activations are written without branches so that the CPU loops calling them
// vectorise. GELU is the exact form z * Phi(z) (the default of Keras and PyTorch); Phi comes
// from the Abramowitz & Stegun 7.1.26 erf (|error| < 1.5e-7) and exp from a Cody-Waite
// reduction with Cephes' polynomial (about 1 ulp): libm's expf would stop GCC from
// vectorising. Clamps are written as `a < b ? b : a` (std::max's own definition, which keeps a
// NaN in `a`) because std::max is not a device function.
//
// The functions live in the including kernel's namespace: the CPU sources are compiled once
// per instruction set (cpu::avx2, cpu::generic), and one inline function shared by both
// object files could be merged into the AVX2 copy.
#pragma once
#include <math.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "geometry.h"

#if defined(FASTCONV_CUDA_NS)  // cuda/kernels.h: nvcc or the CPU harness
#define FASTCONV_BATCH_NORM_NS FASTCONV_CUDA_NS
#elif defined(FASTCONV_ISA)  // a CPU kernel source
#define FASTCONV_BATCH_NORM_NS cpu::FASTCONV_ISA
#else
#error \
    "batch_norm_math.h is for kernel sources: define FASTCONV_ISA or include cuda/kernels.h first"
#endif

namespace fastconv::FASTCONV_BATCH_NORM_NS {

// exp(v) for v <= 0; below -87 it returns exp(-87) (~1.6e-38) rather than a subnormal.
FC_HD inline float exp_nonpositive(float v) {
  v = v < -87.f ? -87.f : v;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer n
  constexpr uint32_t kRoundBits = 0x4B400000;
  const float shifted = v * 1.44269504f + kRound;
  const float n = shifted - kRound;
  const float r = (v - n * 0.693359375f) + n * 2.12194440e-4f;  // v - n ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  uint32_t bits;  // unsigned: a NaN's bits would overflow a signed shift
  memcpy(&bits, &shifted, sizeof bits);
  bits = (bits - kRoundBits + 127) << 23;  // 2^n: n is in the low bits of `shifted`
  float two_to_n;
  memcpy(&two_to_n, &bits, sizeof two_to_n);
  return p * two_to_n;
}

// Phi(z), the standard normal CDF; sets `density` to phi(z).
FC_HD inline float normal_cdf(float z, float& density) {
  const float a = fabsf(z) * 0.70710678f;
  const float e = exp_nonpositive(-a * a);  // exp(-z^2 / 2)
  density = 0.39894228f * e;
  const float t = 1.f / (1.f + 0.3275911f * a);
  const float poly =
      t * (0.254829592f +
           t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float tail = 0.5f * poly * e;       // 1 - Phi(|z|)
  return 0.5f + copysignf(0.5f - tail, z);  // Phi(z) = 1 - tail for z >= 0, else tail
}

template <Activation act>
FC_HD inline float activate(float z) {
  if constexpr (act == Activation::relu) return z < 0.f ? 0.f : z;
  if constexpr (act == Activation::gelu) {
    float density;
    return z * normal_cdf(z, density);
  }
  return z;
}

// The gradient at z given the gradient dy at activate(z). ReLU selects rather than
// multiplies, so an infinite dy where the unit is off gives 0, not NaN.
template <Activation act>
FC_HD inline float activation_backward(float z, float dy) {
  if constexpr (act == Activation::relu) return z > 0.f ? dy : 0.f;
  if constexpr (act == Activation::gelu) {
    float density;
    const float cdf = normal_cdf(z, density);
    return dy * (cdf + z * density);
  }
  return dy;
}

// body(std::integral_constant<Activation, act>{}) for the runtime value `act` (host code).
template <class Body>
void with_activation(Activation act, Body body) {
  switch (act) {
    case Activation::relu:
      return body(std::integral_constant<Activation, Activation::relu>{});
    case Activation::gelu:
      return body(std::integral_constant<Activation, Activation::gelu>{});
    default:
      return body(std::integral_constant<Activation, Activation::none>{});
  }
}

// The statistics are taken in two passes over x, both summing d = x - pivot: the first with
// an element of the channel as the pivot, which moves the pivot to the mean (to float
// rounding); the second then sums d and d^2 about that pivot. Summing (x - mean)^2 directly,
// rather than x^2 - mean^2, keeps the variance's digits when the mean is large against the
// spread. `count` is the number of elements of a channel, outer * inner.
FC_HD inline float moved_pivot(float pivot, double sum, double count) {
  return static_cast<float>(pivot + sum / count);
}

// The mean and the biased variance from the second pass's sums of d and d^2.
FC_HD inline void channel_statistics(float pivot, double sum, double sum_squares, double count,
                                     float& mean, float& var) {
  const double m1 = sum / count;  // small: the mean of x - mean, float rounding
  const double v = sum_squares / count - m1 * m1;
  mean = static_cast<float>(pivot + m1);
  var = static_cast<float>(v < 0.0 ? 0.0 : v);  // rounding may go below 0; a NaN stays NaN
}

// y = a * x + b per channel: the normalisation with gamma and beta (1 and 0 when null)
// folded in. Forward, inference and backward all derive it from the same float statistics,
// so backward recomputes exactly the pre-activation values that forward activated.
FC_HD inline void affine_coefficients(int64_t c, const float* mean, const float* var,
                                      const float* gamma, const float* beta, float eps, float& a,
                                      float& b) {
  const double scale = (gamma ? gamma[c] : 1.0) / sqrt(static_cast<double>(var[c]) + eps);
  a = static_cast<float>(scale);
  b = static_cast<float>((beta ? beta[c] : 0.0) - mean[c] * scale);
}

// The parameter gradients and dx = k_dz * dz + k_x * x + k_0 of channel c, from the sums of
// dz and dz * (x - mean) over the channel (dz: the gradient at the activation's input).
struct BackwardCoefficients {
  float dgamma, dbeta, k_dz, k_x, k_0;
};

FC_HD inline BackwardCoefficients backward_coefficients(int64_t c, double sum_dz, double sum_dz_x,
                                                        const float* mean, const float* var,
                                                        const float* gamma, float eps,
                                                        double count) {
  const double inv = 1.0 / sqrt(static_cast<double>(var[c]) + eps);
  const double a = (gamma ? gamma[c] : 1.0) * inv;
  const double sum_dz_xhat = sum_dz_x * inv;
  // dx = a * (dz - sum_dz / m - xhat * sum_dz_xhat / m), xhat = (x - mean) * inv
  const double per_x = -a * inv * sum_dz_xhat / count;
  return {static_cast<float>(sum_dz_xhat), static_cast<float>(sum_dz), static_cast<float>(a),
          static_cast<float>(per_x), static_cast<float>(-a * sum_dz / count - per_x * mean[c])};
}

}  // namespace fastconv::FASTCONV_BATCH_NORM_NS

#undef FASTCONV_BATCH_NORM_NS
