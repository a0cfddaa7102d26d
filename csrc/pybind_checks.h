// Checks shared by the pybind11 modules (fastconv._cpu, _cuda, _cuda_harness): the Python
// layer validates every call, and these repeat what native code relies on, so that a direct
// call with a wrong buffer or geometry raises instead of touching memory.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <string>

#include "geometry.h"

namespace fastconv::pybind_checks {

namespace py = pybind11;

inline const float* checked(const py::array& a, int64_t size, const char* name, bool output = false) {
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || a.dtype().byteorder() == '>')
    throw py::type_error(std::string(name) + " must be a float32 array");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (a.size() != size)
    throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) +
                          " elements, the geometry needs " + std::to_string(size));
  if (output && !a.writeable()) throw py::value_error(std::string(name) + " is read-only");
  return static_cast<const float*>(a.data());
}

inline float* output(const py::array& a, int64_t size, const char* name) {
  return const_cast<float*>(checked(a, size, name, true));
}

// checked() / output() for an optional argument: None gives nullptr.
inline const float* checked_or_null(const py::object& a, int64_t size, const char* name) {
  return a.is_none() ? nullptr : checked(a.cast<py::array>(), size, name);
}

inline float* output_or_null(const py::object& a, int64_t size, const char* name) {
  return a.is_none() ? nullptr : output(a.cast<py::array>(), size, name);
}

inline void require(bool ok, const char* what) {
  if (!ok) throw py::value_error(std::string("invalid geometry: ") + what);
}

// The geometry tuples as Python passes them (ConvGeometry / PoolGeometry field for field).
using ConvFields = std::array<int64_t, ConvGeometry::kFields>;
using PoolFields = std::array<int64_t, PoolGeometry::kFields>;

inline ConvGeometry conv_geometry(const ConvFields& fields) {
  const ConvGeometry g = ConvGeometry::from_array(fields);
  require(g.n >= 0 && g.c_in > 0 && g.h > 0 && g.w > 0 && g.c_out > 0 && g.kh > 0 && g.kw > 0,
          "sizes must be positive");
  require(g.stride_h > 0 && g.stride_w > 0 && g.dil_h > 0 && g.dil_w > 0, "stride/dilation > 0");
  require(g.groups > 0 && g.c_in % g.groups == 0 && g.c_out % g.groups == 0, "groups");
  require(g.oh > 0 && g.ow > 0, "empty output");
  // Windows may reach past the input on any side: every kernel bounds-checks its reads.
  require(g.pad_top >= 0 && g.pad_left >= 0, "padding must be >= 0");
  return g;
}

inline PoolGeometry pool_geometry(const PoolFields& fields) {
  const PoolGeometry g = PoolGeometry::from_array(fields);
  require(g.n >= 0 && g.c > 0 && g.h > 0 && g.w > 0 && g.kh > 0 && g.kw > 0, "sizes");
  require(g.stride_h > 0 && g.stride_w > 0, "stride > 0");
  require(g.kind >= 0 && g.kind <= 3, "pool kind");
  require(g.oh > 0 && g.ow > 0 && g.pad_top >= 0 && g.pad_left >= 0, "output size");
  // Every window must hold a real cell: first and last windows overlap the input.
  require(g.pad_top < g.kh && g.pad_left < g.kw &&
              (g.oh - 1) * g.stride_h - g.pad_top < g.h && (g.ow - 1) * g.stride_w - g.pad_left < g.w,
          "a window would hold only padding");
  return g;
}

// The batch-norm shape (outer, channels, inner) as Python passes it (ChannelShape).
using ChannelFields = std::array<int64_t, 3>;

inline ChannelShape channel_shape(const ChannelFields& fields) {
  const ChannelShape s{fields[0], fields[1], fields[2]};
  require(s.outer > 0 && s.channels > 0 && s.inner > 0, "(outer, channels, inner) must be positive");
  return s;
}

// The arguments every batch-norm entry point shares, checked.
struct BatchNormArgs {
  ChannelShape s;
  float eps;
  Activation act;
};

inline BatchNormArgs batch_norm_args(const ChannelFields& shape, double eps, int act) {
  const ChannelShape s = channel_shape(shape);
  require(eps >= 0, "eps must be >= 0");
  require(act >= 0 && act <= 2, "activation must be 0 (none), 1 (relu) or 2 (gelu)");
  return {s, static_cast<float>(eps), static_cast<Activation>(act)};
}

// The buffers of the batch-norm entry points, checked against the shape (in argument order).
struct BatchNormForwardBuffers {
  const float *x, *gamma, *beta;
  float *y, *mean, *var;
  BatchNormForwardBuffers(const ChannelShape& s, const py::array& x_, const py::object& gamma_,
                          const py::object& beta_, const py::array& y_, const py::array& mean_,
                          const py::array& var_)
      : x(checked(x_, s.size(), "x")),
        gamma(checked_or_null(gamma_, s.channels, "gamma")),
        beta(checked_or_null(beta_, s.channels, "beta")),
        y(output(y_, s.size(), "y")),
        mean(output(mean_, s.channels, "mean")),
        var(output(var_, s.channels, "var")) {}
};

struct BatchNormInferenceBuffers {
  const float *x, *mean, *var, *gamma, *beta;
  float* y;
  BatchNormInferenceBuffers(const ChannelShape& s, const py::array& x_, const py::array& mean_,
                            const py::array& var_, const py::object& gamma_,
                            const py::object& beta_, const py::array& y_)
      : x(checked(x_, s.size(), "x")),
        mean(checked(mean_, s.channels, "mean")),
        var(checked(var_, s.channels, "var")),
        gamma(checked_or_null(gamma_, s.channels, "gamma")),
        beta(checked_or_null(beta_, s.channels, "beta")),
        y(output(y_, s.size(), "y")) {}
};

struct BatchNormBackwardBuffers {
  const float *dy, *x, *mean, *var, *gamma, *beta;
  float *dx, *dgamma, *dbeta;  // dx may be null
  BatchNormBackwardBuffers(const ChannelShape& s, const py::array& dy_, const py::array& x_,
                           const py::array& mean_, const py::array& var_,
                           const py::object& gamma_, const py::object& beta_,
                           const py::object& dx_, const py::array& dgamma_,
                           const py::array& dbeta_)
      : dy(checked(dy_, s.size(), "dy")),
        x(checked(x_, s.size(), "x")),
        mean(checked(mean_, s.channels, "mean")),
        var(checked(var_, s.channels, "var")),
        gamma(checked_or_null(gamma_, s.channels, "gamma")),
        beta(checked_or_null(beta_, s.channels, "beta")),
        dx(output_or_null(dx_, s.size(), "dx")),
        dgamma(output(dgamma_, s.channels, "dgamma")),
        dbeta(output(dbeta_, s.channels, "dbeta")) {}
};

}  // namespace fastconv::pybind_checks
