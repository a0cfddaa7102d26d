// fastconv._cpu: pybind11 bindings of the CPU kernels.
//
// The Python layer validates every argument and allocates the outputs; this layer checks
// again that each buffer is float32, C-contiguous and exactly the size its geometry says
// (so a direct call with a wrong buffer raises instead of touching memory), picks the
// AVX2 or generic kernels, and releases the GIL while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu/conv2d_winograd.h"
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
std::atomic<bool> g_avx2{false};
std::atomic<bool> g_winograd{true};

bool cpu_has_avx2() {
#if FASTCONV_HAVE_AVX2 && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
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

// Runs the AVX2 build of a kernel where the CPU has it, the generic build elsewhere.
#if FASTCONV_HAVE_AVX2
#define DISPATCH(kernel, ...) \
  (cpu::g_avx2.load() ? cpu::avx2::kernel(__VA_ARGS__) : cpu::generic::kernel(__VA_ARGS__))
#else
#define DISPATCH(kernel, ...) cpu::generic::kernel(__VA_ARGS__)
#endif

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

void batch_norm_forward(const py::array& x, const py::object& gamma, const py::object& beta,
                        double eps, int act, const py::array& y, const py::array& mean,
                        const py::array& var, const std::array<int64_t, 3>& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const BatchNormForwardBuffers b(s, x, gamma, beta, y, mean, var);
  py::gil_scoped_release release;
  SerialIfSmall serial(s.size(), kPoolSerialWork);
  DISPATCH(batch_norm_forward, s, b.x, b.gamma, b.beta, e, a, b.y, b.mean, b.var);
}

void batch_norm_inference(const py::array& x, const py::array& mean, const py::array& var,
                          const py::object& gamma, const py::object& beta, double eps, int act,
                          const py::array& y, const std::array<int64_t, 3>& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const BatchNormInferenceBuffers b(s, x, mean, var, gamma, beta, y);
  py::gil_scoped_release release;
  SerialIfSmall serial(s.size(), kPoolSerialWork);
  DISPATCH(batch_norm_inference, s, b.x, b.mean, b.var, b.gamma, b.beta, e, a, b.y);
}

void batch_norm_backward(const py::array& dy, const py::array& x, const py::array& mean,
                         const py::array& var, const py::object& gamma, const py::object& beta,
                         double eps, int act, const py::object& dx, const py::array& dgamma,
                         const py::array& dbeta, const std::array<int64_t, 3>& shape) {
  const auto [s, e, a] = batch_norm_args(shape, eps, act);
  const BatchNormBackwardBuffers b(s, dy, x, mean, var, gamma, beta, dx, dgamma, dbeta);
  py::gil_scoped_release release;
  SerialIfSmall serial(s.size(), kPoolSerialWork);
  DISPATCH(batch_norm_backward, s, b.dy, b.x, b.mean, b.var, b.gamma, b.beta, e, a, b.dx,
           b.dgamma, b.dbeta);
}

void set_isa(const std::string& name) {
  if (name == "avx2") {
    if (!cpu::cpu_has_avx2()) throw py::value_error("this CPU (or build) has no AVX2/FMA");
    cpu::g_avx2 = true;
  } else if (name == "generic") {
    cpu::g_avx2 = false;
  } else {
    throw py::value_error("isa must be 'avx2' or 'generic', got '" + name + "'");
  }
}

void set_num_threads(int n) {
  if (n < 1) throw py::value_error("set_num_threads needs n >= 1, got " + std::to_string(n));
  cpu::g_threads = n;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastconv CPU kernels (AVX2/FMA with a portable fallback, OpenMP threads)";
  const char* winograd = std::getenv("FASTCONV_WINOGRAD");
  cpu::g_winograd = !(winograd && std::string(winograd) == "0");
  const char* forced = std::getenv("FASTCONV_ISA");
  set_isa(forced ? forced : (cpu::cpu_has_avx2() ? "avx2" : "generic"));

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
  m.def("isa", [] { return std::string(cpu::g_avx2 ? "avx2" : "generic"); },
        "The instruction set the kernels run with: 'avx2' or 'generic'.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Force 'generic' (portable) or 'avx2' kernels; for testing both on one machine.");
  m.def("set_winograd", [](bool on) { cpu::g_winograd = on; }, py::arg("enabled"),
        "Use Winograd F(4x4,3x3) for 3x3 stride-1 convolutions (default on).");
  m.def("winograd", [] { return cpu::g_winograd.load(); });
  m.def("get_num_threads", &cpu::configured_threads, "Threads the kernels use.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads the kernels use.");
}
