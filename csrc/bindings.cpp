// fastconv._cpu: pybind11 bindings of the CPU kernels.
//
// The Python layer validates every argument and allocates the outputs; this layer checks
// again that each buffer is float32, C-contiguous and exactly the size its geometry says
// (so a direct call with a wrong buffer raises instead of touching memory), picks the
// AVX-512, AVX2 or generic kernels (cpu/isa.h), and releases the GIL while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu/conv2d_algorithm.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "pybind_checks.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using fastconv::ConvGeometry;
using fastconv::PoolGeometry;
using namespace fastconv::pybind_checks;

namespace fastconv::cpu {

namespace {
std::atomic<int> g_threads{0};  // 0: not set yet, use OpenMP's default
thread_local bool t_serial = false;  // set for the duration of a call too small to share
std::atomic<bool> g_winograd{true};
}  // namespace

bool winograd_enabled() { return g_winograd.load(); }

int num_threads() {
  if (t_serial) return 1;
  return configured_threads();
}

int configured_threads() {
  const int n = g_threads.load();
#ifdef _OPENMP
  return n > 0 ? n : omp_get_max_threads();
#else
  (void)n;
  return 1;
#endif
}

// Waking a second thread costs microseconds on a quiet machine and a whole scheduler slice
// on a busy one; below about 2^21 multiply-adds (or 2^19 pooled elements) a call runs on
// the calling thread alone.
SerialIfSmall::SerialIfSmall(int64_t work, int64_t threshold) : previous_(t_serial) {
  t_serial = previous_ || work < threshold;
}
SerialIfSmall::~SerialIfSmall() { t_serial = previous_; }

}  // namespace fastconv::cpu

namespace {

namespace cpu = fastconv::cpu;
using cpu::SerialIfSmall;

int64_t conv_work(const ConvGeometry& g) { return g.y_size() * g.cin_per_group() * g.kh * g.kw; }
constexpr int64_t kConvSerialWork = int64_t{1} << 21, kPoolSerialWork = int64_t{1} << 19;

// Runs the build of a kernel for the active ISA (cpu/isa.h). Builds without the x86-64
// kernels name the generic ones in their place; isa.cpp never chooses those ISAs there.
#if FASTCONV_HAVE_AVX512
#define FC_AVX512 avx512
#define FC_AVX2 avx2
#else
#define FC_AVX512 generic
#define FC_AVX2 generic
#endif
#define DISPATCH_ISA(isa, kernel, ...)                                                \
  ((isa) == cpu::Isa::avx512 ? cpu::FC_AVX512::kernel(__VA_ARGS__)                   \
   : (isa) == cpu::Isa::avx2 ? cpu::FC_AVX2::kernel(__VA_ARGS__)                     \
                             : cpu::generic::kernel(__VA_ARGS__))
#define DISPATCH(kernel, ...) DISPATCH_ISA(cpu::active_isa(), kernel, __VA_ARGS__)

void conv2d_forward(const py::array& x, const py::array& w, const py::object& bias,
                    const py::array& y, const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float* b = checked_or_null(bias, g.c_out, "bias");
  const float *px = checked(x, g.x_size(), "x"), *pw = checked(w, g.w_size(), "w");
  float* py_ = output(y, g.y_size(), "y");
  if (g.n == 0) return;
  py::gil_scoped_release release;
  SerialIfSmall serial(conv_work(g), kConvSerialWork);
  DISPATCH(conv2d_forward, g, px, pw, b, py_);
}

void conv2d_backward_input(const py::array& dy, const py::array& w, const py::array& dx,
                           const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float *pdy = checked(dy, g.y_size(), "dy"), *pw = checked(w, g.w_size(), "w");
  float* pdx = output(dx, g.x_size(), "dx");
  if (g.n == 0) return;
  py::gil_scoped_release release;
  SerialIfSmall serial(conv_work(g), kConvSerialWork);
  DISPATCH(conv2d_backward_input, g, pdy, pw, pdx);
}

void conv2d_backward_weight(const py::array& dy, const py::array& x, const py::array& dw,
                            const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float *pdy = checked(dy, g.y_size(), "dy"), *px = checked(x, g.x_size(), "x");
  float* pdw = output(dw, g.w_size(), "dw");
  py::gil_scoped_release release;
  if (g.n == 0) {
    std::fill(pdw, pdw + g.w_size(), 0.f);
    return;
  }
  SerialIfSmall serial(conv_work(g), kConvSerialWork);
  DISPATCH(conv2d_backward_weight, g, pdy, px, pdw);
}

void bias_backward(const py::array& dy, const py::array& dbias,
                   const ConvFields& f) {
  const ConvGeometry g = conv_geometry(f);
  const float* pdy = checked(dy, g.y_size(), "dy");
  float* pdb = output(dbias, g.c_out, "dbias");
  py::gil_scoped_release release;
  if (g.n == 0) {
    std::fill(pdb, pdb + g.c_out, 0.f);
    return;
  }
  SerialIfSmall serial(g.y_size(), kPoolSerialWork);
  DISPATCH(bias_backward, g, pdy, pdb);
}

void pool2d_forward(const py::array& x, const py::array& y,
                    const PoolFields& f) {
  const PoolGeometry g = pool_geometry(f);
  const float* px = checked(x, g.x_size(), "x");
  float* py_ = output(y, g.y_size(), "y");
  if (g.n == 0) return;
  py::gil_scoped_release release;
  SerialIfSmall serial(g.x_size(), kPoolSerialWork);
  DISPATCH(pool2d_forward, g, px, py_);
}

void pool2d_backward(const py::array& dy, const py::array& x, const py::array& dx,
                     const PoolFields& f) {
  const PoolGeometry g = pool_geometry(f);
  const float *pdy = checked(dy, g.y_size(), "dy"), *px = checked(x, g.x_size(), "x");
  float* pdx = output(dx, g.x_size(), "dx");
  if (g.n == 0) return;
  py::gil_scoped_release release;
  SerialIfSmall serial(g.x_size(), kPoolSerialWork);
  DISPATCH(pool2d_backward, g, pdy, px, pdx);
}

// The arguments every batch-norm entry point shares, checked.
struct BatchNormArgs {
  cpu::ChannelShape s;
  float eps;
  cpu::Activation act;
};

BatchNormArgs batch_norm_args(const std::array<int64_t, 3>& shape, double eps, int act) {
  const cpu::ChannelShape s{shape[0], shape[1], shape[2]};
  require(s.outer > 0 && s.channels > 0 && s.inner > 0, "(outer, channels, inner) must be positive");
  require(eps >= 0, "eps must be >= 0");
  require(act >= 0 && act <= 2, "activation must be 0 (none), 1 (relu) or 2 (gelu)");
  return {s, static_cast<float>(eps), static_cast<cpu::Activation>(act)};
}

void batch_norm_forward(const py::array& x, const py::object& gamma, const py::object& beta,
                        double eps, int act, const py::array& y, const py::array& mean,
                        const py::array& var, const std::array<int64_t, 3>& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const float* px = checked(x, s.size(), "x");
  const float *pg = checked_or_null(gamma, s.channels, "gamma"),
              *pb = checked_or_null(beta, s.channels, "beta");
  float *py_ = output(y, s.size(), "y"), *pm = output(mean, s.channels, "mean"),
        *pv = output(var, s.channels, "var");
  py::gil_scoped_release release;
  SerialIfSmall serial(s.size(), kPoolSerialWork);
  DISPATCH(batch_norm_forward, s, px, pg, pb, e, a, py_, pm, pv);
}

void batch_norm_inference(const py::array& x, const py::array& mean, const py::array& var,
                          const py::object& gamma, const py::object& beta, double eps, int act,
                          const py::array& y, const std::array<int64_t, 3>& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const float *px = checked(x, s.size(), "x"), *pm = checked(mean, s.channels, "mean"),
              *pv = checked(var, s.channels, "var"),
              *pg = checked_or_null(gamma, s.channels, "gamma"),
              *pb = checked_or_null(beta, s.channels, "beta");
  float* py_ = output(y, s.size(), "y");
  py::gil_scoped_release release;
  SerialIfSmall serial(s.size(), kPoolSerialWork);
  DISPATCH(batch_norm_inference, s, px, pm, pv, pg, pb, e, a, py_);
}

void batch_norm_backward(const py::array& dy, const py::array& x, const py::array& mean,
                         const py::array& var, const py::object& gamma, const py::object& beta,
                         double eps, int act, const py::object& dx, const py::array& dgamma,
                         const py::array& dbeta, const std::array<int64_t, 3>& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const float *pdy = checked(dy, s.size(), "dy"), *px = checked(x, s.size(), "x"),
              *pm = checked(mean, s.channels, "mean"), *pv = checked(var, s.channels, "var"),
              *pg = checked_or_null(gamma, s.channels, "gamma"),
              *pb = checked_or_null(beta, s.channels, "beta");
  float* pdx = output_or_null(dx, s.size(), "dx");
  float *pdg = output(dgamma, s.channels, "dgamma"), *pdb = output(dbeta, s.channels, "dbeta");
  py::gil_scoped_release release;
  SerialIfSmall serial(s.size(), kPoolSerialWork);
  DISPATCH(batch_norm_backward, s, pdy, px, pm, pv, pg, pb, e, a, pdx, pdg, pdb);
}

cpu::Isa parsed_isa(const std::string& name) {
  cpu::Isa isa;
  if (!cpu::parse_isa(name, isa))
    throw py::value_error("isa must be 'avx512', 'avx2' or 'generic', got '" + name + "'");
  const std::string missing = cpu::isa_missing(cpu::detect_features(), isa);
  if (!missing.empty()) throw py::value_error("isa '" + name + "' cannot run here: " + missing);
  return isa;
}

void set_isa(const std::string& name) {
  cpu::set_active_isa({parsed_isa(name), "set by set_isa('" + name + "')"});
}

// GFLOP/s of `threads` threads running the FMA probe of `isa`'s build at once, summed.
double fma_peak(const std::string& isa_name, int threads) {
  if (threads < 1) throw py::value_error("fma_peak needs threads >= 1");
  const cpu::Isa isa = parsed_isa(isa_name);
  py::gil_scoped_release release;
  std::vector<double> rates(threads);
  cpu::parallel_threads(threads, [&](int t, int) { rates[t] = DISPATCH_ISA(isa, fma_peak_gflops, 0.2); });
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

// The name of the algorithm the active kernels run for one pass of a convolution.
std::string conv_algorithm(const ConvFields& f, const std::string& direction) {
  cpu::Direction d;
  if (!cpu::parse_direction(direction, d))
    throw py::value_error("direction must be 'forward', 'backward_input' or 'backward_weight', got '" +
                          direction + "'");
  return cpu::algorithm_name(cpu::select_conv_algorithm(conv_geometry(f), d, cpu::active_isa()));
}

void set_num_threads(int n) {
  if (n < 1) throw py::value_error("set_num_threads needs n >= 1, got " + std::to_string(n));
  cpu::g_threads = n;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastconv CPU kernels (AVX-512 or AVX2/FMA with a portable fallback, OpenMP threads)";
  const char* winograd = std::getenv("FASTCONV_WINOGRAD");
  cpu::g_winograd = !(winograd && std::string(winograd) == "0");
  try {
    cpu::set_active_isa(cpu::choose_isa(cpu::detect_features(), std::getenv("FASTCONV_ISA")));
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }

  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("w"), py::arg("bias"),
        py::arg("y"), py::arg("geometry"));
  m.def("conv2d_backward_input", &conv2d_backward_input, py::arg("dy"), py::arg("w"),
        py::arg("dx"), py::arg("geometry"));
  m.def("conv2d_backward_weight", &conv2d_backward_weight, py::arg("dy"), py::arg("x"),
        py::arg("dw"), py::arg("geometry"));
  m.def("bias_backward", &bias_backward, py::arg("dy"), py::arg("dbias"), py::arg("geometry"));
  m.def("pool2d_forward", &pool2d_forward, py::arg("x"), py::arg("y"), py::arg("geometry"));
  m.def("pool2d_backward", &pool2d_backward, py::arg("dy"), py::arg("x"), py::arg("dx"),
        py::arg("geometry"));
  m.def("batch_norm_forward", &batch_norm_forward, py::arg("x"), py::arg("gamma"),
        py::arg("beta"), py::arg("eps"), py::arg("activation"), py::arg("y"), py::arg("mean"),
        py::arg("var"), py::arg("shape"));
  m.def("batch_norm_inference", &batch_norm_inference, py::arg("x"), py::arg("mean"),
        py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("eps"),
        py::arg("activation"), py::arg("y"), py::arg("shape"));
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"),
        py::arg("mean"), py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("eps"),
        py::arg("activation"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"),
        py::arg("shape"));
  m.def("isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The instruction set the kernels run with: 'avx512', 'avx2' or 'generic'.");
  m.def("isa_reason", [] { return cpu::active_isa_reason(); },
        "Why isa() is what it is, e.g. 'avx2: the CPU lacks AVX-512BW'.");
  m.def("supported_isas", [] {
          std::vector<std::string> names;
          for (cpu::Isa isa : cpu::supported_isas(cpu::detect_features()))
            names.emplace_back(cpu::isa_name(isa));
          return names;
        },
        "The instruction sets this machine and build can run, best first.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Force 'avx512', 'avx2' or 'generic' kernels; for testing each on one machine.");
  m.def("fma_peak", &fma_peak, py::arg("isa"), py::arg("threads"),
        "GFLOP/s of `threads` threads running register-only FMAs with `isa`'s kernels, summed.");
  m.def("conv_algorithm", &conv_algorithm, py::arg("geometry"), py::arg("direction"),
        "The algorithm the active kernels run for a convolution pass ('forward', "
        "'backward_input' or 'backward_weight'), e.g. 'winograd_f4x3'.");
  m.def("set_winograd", [](bool on) { cpu::g_winograd = on; }, py::arg("enabled"),
        "Use Winograd F(4x4,3x3) for 3x3 stride-1 convolutions (default on).");
  m.def("winograd", [] { return cpu::g_winograd.load(); });
  m.def("get_num_threads", &cpu::configured_threads, "Threads the kernels use.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads the kernels use.");
}
