// Activations for fusing into kernels, written without branches so that the loops calling
// them vectorise. GELU is the exact form z * Phi(z) (the default of Keras and PyTorch); Phi
// comes from the Abramowitz & Stegun 7.1.26 erf (|error| < 1.5e-7) and exp from a
// Cody-Waite reduction with Cephes' polynomial (about 1 ulp): libm's expf would stop GCC
// from vectorising.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

namespace fastconv::cpu::FASTCONV_ISA {

// exp(v) for v <= 0; below -87 it returns exp(-87) (~1.6e-38) rather than a subnormal.
inline float exp_nonpositive(float v) {
  v = std::max(v, -87.f);
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer n
  constexpr int32_t kRoundBits = 0x4B400000;
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
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits - kRoundBits + 127) << 23;  // 2^n: n is in the low bits of `shifted`
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof two_to_n);
  return p * two_to_n;
}

// Phi(z), the standard normal CDF; sets `density` to phi(z).
inline float normal_cdf(float z, float& density) {
  const float a = std::fabs(z) * 0.70710678f;
  const float e = exp_nonpositive(-a * a);  // exp(-z^2 / 2)
  density = 0.39894228f * e;
  const float t = 1.f / (1.f + 0.3275911f * a);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                     t * (-1.453152027f + t * 1.061405429f))));
  const float tail = 0.5f * poly * e;  // 1 - Phi(|z|)
  return 0.5f + std::copysign(0.5f - tail, z);  // Phi(z) = 1 - tail for z >= 0, else tail
}

template <Activation act>
inline float activate(float z) {
  if constexpr (act == Activation::relu) return std::max(z, 0.f);
  if constexpr (act == Activation::gelu) {
    float density;
    return z * normal_cdf(z, density);
  }
  return z;
}

// The gradient at z given the gradient dy at activate(z). ReLU selects rather than
// multiplies, so an infinite dy where the unit is off gives 0, not NaN.
template <Activation act>
inline float activation_backward(float z, float dy) {
  if constexpr (act == Activation::relu) return z > 0.f ? dy : 0.f;
  if constexpr (act == Activation::gelu) {
    float density;
    const float cdf = normal_cdf(z, density);
    return dy * (cdf + z * density);
  }
  return dy;
}

// body(std::integral_constant<Activation, act>{}) for the runtime value `act`.
template <class Body>
void with_activation(Activation act, Body body) {
  switch (act) {
    case Activation::relu: return body(std::integral_constant<Activation, Activation::relu>{});
    case Activation::gelu: return body(std::integral_constant<Activation, Activation::gelu>{});
    default: return body(std::integral_constant<Activation, Activation::none>{});
  }
}

}  // namespace fastconv::cpu::FASTCONV_ISA
