// The native ops of fastconv, listed once for every backend module: fastconv._cpu,
// fastconv._cuda and fastconv._cuda_harness each define a Backend (how to read a buffer, run
// a kernel, zero an output; see binding_support.h) and FASTCONV_KERNEL(name), a callable
// (launch, geometry, buffers...) that runs their kernel `name`, then include this file and
// call bind_ops<Backend>(module). Adding an op adds one def_op line here.
#pragma once
#include <stdexcept>

#include "binding_support.h"

namespace fastconv::bindings {

// A pooling kernel that keeps each window's winner in a byte (PoolGeometry::saves_winners).
template <class Kernel>
auto saving_winners(Kernel kernel) {
  return [kernel](auto& launch, const PoolGeometry& g, auto... buffers) {
    if (!g.saves_winners())
      throw std::invalid_argument(
          "saved winners are for max/min pooling windows of at most 256 cells");
    kernel(launch, g, buffers...);
  };
}

// The op list. FASTCONV_KERNEL(name) is the including module's callable
// (launch, geometry, buffers...) for its kernel `name`.
template <class Backend>
void bind_ops(py::module_& m) {
  using C = ConvGeometry;
  using P = PoolGeometry;
  using N = NormGeometry;
  def_op<Backend, C>(m, "conv2d_forward", FASTCONV_KERNEL(conv2d_forward), in("x", &C::x_size),
                     in("w", &C::w_size), optional_in("bias", &C::bias_size), out("y", &C::y_size));
  def_op<Backend, C>(m, "conv2d_backward_input", FASTCONV_KERNEL(conv2d_backward_input),
                     in("dy", &C::y_size), in("w", &C::w_size), out("dx", &C::x_size));
  def_op<Backend, C>(m, "conv2d_backward_weight", FASTCONV_KERNEL(conv2d_backward_weight),
                     in("dy", &C::y_size), in("x", &C::x_size), summed_out("dw", &C::w_size));
  def_op<Backend, C>(m, "conv2d_backward", FASTCONV_KERNEL(conv2d_backward), in("dy", &C::y_size),
                     in("x", &C::x_size), in("w", &C::w_size), optional_out("dx", &C::x_size),
                     summed_out("dw", &C::w_size), optional_summed_out("dbias", &C::bias_size));
  def_op<Backend, C>(m, "bias_backward", FASTCONV_KERNEL(bias_backward), in("dy", &C::y_size),
                     summed_out("dbias", &C::bias_size));
  def_op<Backend, P>(m, "pool2d_forward", FASTCONV_KERNEL(pool2d_forward), in("x", &P::x_size),
                     out("y", &P::y_size));
  def_op<Backend, P>(m, "pool2d_backward", FASTCONV_KERNEL(pool2d_backward), in("dy", &P::y_size),
                     in("x", &P::x_size), out("dx", &P::x_size));
  def_op<Backend, P>(m, "pool2d_forward_winners",
                     saving_winners(FASTCONV_KERNEL(pool2d_forward_winners)), in("x", &P::x_size),
                     out("y", &P::y_size), out("winners", &P::y_size, Dtype::u8));
  def_op<Backend, P>(m, "pool2d_backward_winners",
                     saving_winners(FASTCONV_KERNEL(pool2d_backward_winners)), in("dy", &P::y_size),
                     in("winners", &P::y_size, Dtype::u8), out("dx", &P::x_size));
  def_op<Backend, N>(m, "batch_norm_forward", FASTCONV_KERNEL(batch_norm_forward),
                     in("x", &N::size), optional_in("gamma", &N::channel_size),
                     optional_in("beta", &N::channel_size), out("y", &N::size),
                     out("mean", &N::channel_size), out("var", &N::channel_size));
  def_op<Backend, N>(m, "batch_norm_inference", FASTCONV_KERNEL(batch_norm_inference),
                     in("x", &N::size), in("mean", &N::channel_size), in("var", &N::channel_size),
                     optional_in("gamma", &N::channel_size), optional_in("beta", &N::channel_size),
                     out("y", &N::size));
  def_op<Backend, N>(m, "batch_norm_backward", FASTCONV_KERNEL(batch_norm_backward),
                     in("dy", &N::size), in("x", &N::size), in("mean", &N::channel_size),
                     in("var", &N::channel_size), optional_in("gamma", &N::channel_size),
                     optional_in("beta", &N::channel_size), optional_out("dx", &N::size),
                     out("dgamma", &N::channel_size), out("dbeta", &N::channel_size));
  def_geometry_echo<C>(m, "read_conv_geometry");
  def_geometry_echo<P>(m, "read_pool_geometry");
  def_geometry_echo<N>(m, "read_norm_geometry");
}

}  // namespace fastconv::bindings
