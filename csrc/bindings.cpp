// fastconv._cpu: the CPU kernels behind the op list of op_bindings.h, plus the machine
// controls (instruction set, threads, Winograd).
//
// Each kernel is compiled once per instruction set (see CMakeLists.txt); the import picks
// the best one this CPU and OS support, FASTCONV_ISA overrides it (cpu/isa.h). Kernels run
// with the GIL released; a call too small to share runs on the calling thread alone.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "binding_support.h"
#include "cpu/conv2d_algorithm.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace fastconv::cpu {

namespace {
std::atomic<int> g_threads{0};       // 0: not set yet, use OpenMP's default
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
// on a busy one; below about 2^19 multiply-adds (or 2^16 elements of a memory-bound op) a
// call runs on the calling thread alone. Above those sizes a second thread already pays on
// a quiet machine, as it does in PyTorch from 32K elements.
SerialIfSmall::SerialIfSmall(int64_t work, int64_t threshold) : previous_(t_serial) {
  t_serial = previous_ || work < threshold;
}
SerialIfSmall::~SerialIfSmall() { t_serial = previous_; }

}  // namespace fastconv::cpu

namespace {

namespace cpu = fastconv::cpu;
using fastconv::ConvGeometry;
using fastconv::NormGeometry;
using fastconv::PoolGeometry;

constexpr int64_t kComputeSerialWork = int64_t{1} << 19, kMemorySerialWork = int64_t{1} << 16;

// (work, the work below which a call runs serially) of a call. A depthwise convolution
// loads a vector per FMA: it is memory-bound, and counted in elements like pooling.
std::pair<int64_t, int64_t> work(const ConvGeometry& g) {
  if (g.groups > 1 && g.groups == g.c_in) return {g.x_size() + g.y_size(), kMemorySerialWork};
  return {g.y_size() * g.cin_per_group() * g.kh * g.kw, kComputeSerialWork};
}
std::pair<int64_t, int64_t> work(const PoolGeometry& g) { return {g.x_size(), kMemorySerialWork}; }
// An element through GELU (an erf and an exp) costs several memory-bound elements, so a
// batch norm with GELU is worth spreading over the threads from an array that many times
// smaller.
std::pair<int64_t, int64_t> work(const NormGeometry& g) {
  constexpr int64_t kGeluWeight = 8;
  return {g.act() == fastconv::Activation::gelu ? kGeluWeight * g.size() : g.size(),
          kMemorySerialWork};
}

// How op_bindings.h reads buffers and runs kernels here.
struct Backend {
  struct Launch {};
  static fastconv::bindings::View view(const py::handle& object, const char* name,
                                       fastconv::bindings::Dtype t) {
    return fastconv::bindings::host_view(object, name, t);
  }
  static void zero(float* p, int64_t count, std::uintptr_t) { std::fill(p, p + count, 0.f); }
  template <class G, class Body>
  static void run(const char*, const G& g, std::uintptr_t, Body&& body) {
    Launch launch;
    py::gil_scoped_release release;
    const auto [amount, threshold] = work(g);
    cpu::SerialIfSmall serial(amount, threshold);
    body(launch);
  }
};

}  // namespace

// The build of a kernel for an ISA (cpu/isa.h). Builds without the x86-64 kernels name the
// generic ones in their place; isa.cpp never chooses those ISAs there.
#if FASTCONV_HAVE_AVX512
#define FC_AVX512 avx512
#define FC_AVX2 avx2
#else
#define FC_AVX512 generic
#define FC_AVX2 generic
#endif
#define DISPATCH_ISA(isa, kernel, ...)                             \
  ((isa) == cpu::Isa::avx512 ? cpu::FC_AVX512::kernel(__VA_ARGS__) \
   : (isa) == cpu::Isa::avx2 ? cpu::FC_AVX2::kernel(__VA_ARGS__)   \
                             : cpu::generic::kernel(__VA_ARGS__))
#define FASTCONV_KERNEL(name)                             \
  [](auto&, const auto& g, auto... buffers) {             \
    DISPATCH_ISA(cpu::active_isa(), name, g, buffers...); \
  }
#include "op_bindings.h"

namespace {

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

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (cpu::Isa isa : cpu::supported_isas(cpu::detect_features()))
    names.emplace_back(cpu::isa_name(isa));
  return names;
}

// GFLOP/s of `threads` threads running the FMA probe of `isa`'s build at once, summed.
double fma_peak(const std::string& isa_name, int threads) {
  if (threads < 1) throw py::value_error("fma_peak needs threads >= 1");
  const cpu::Isa isa = parsed_isa(isa_name);
  py::gil_scoped_release release;
  std::vector<double> rates(threads);
  cpu::parallel_threads(threads,
                        [&](int t, int) { rates[t] = DISPATCH_ISA(isa, fma_peak_gflops, 0.2); });
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

// The name of the algorithm the active kernels run for one pass of a convolution.
std::string conv_algorithm(const py::handle& geometry, const std::string& direction) {
  cpu::Direction d;
  if (!cpu::parse_direction(direction, d))
    throw py::value_error(
        "direction must be 'forward', 'backward_input' or 'backward_weight', got '" + direction +
        "'");
  const ConvGeometry g = fastconv::bindings::read_geometry<ConvGeometry>(geometry);
  fastconv::bindings::validate(g);
  return cpu::algorithm_name(cpu::select_conv_algorithm(g, d, cpu::active_isa()));
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
  fastconv::bindings::bind_ops<Backend>(m);
  m.def(
      "isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
      "The instruction set the kernels run with: 'avx512', 'avx2' or 'generic'.");
  m.def(
      "isa_reason", [] { return cpu::active_isa_reason(); },
      "Why isa() is what it is, e.g. 'avx2: the CPU lacks AVX-512BW'.");
  m.def("supported_isas", &supported_isas,
        "The instruction sets this machine and build can run, best first.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Run 'avx512', 'avx2' or 'generic' kernels; for testing each on one machine.");
  m.def("fma_peak", &fma_peak, py::arg("isa"), py::arg("threads"),
        "GFLOP/s of `threads` threads running register-only FMAs with `isa`'s kernels, summed.");
  m.def("conv_algorithm", &conv_algorithm, py::arg("geometry"), py::arg("direction"),
        "The algorithm the active kernels run for a convolution pass ('forward', "
        "'backward_input' or 'backward_weight'), e.g. 'winograd_f4x3'.");
  m.def(
      "set_winograd", [](bool on) { cpu::g_winograd = on; }, py::arg("enabled"),
      "Use Winograd F(4x4,3x3) for 3x3 stride-1 convolutions (default on).");
  m.def("winograd", [] { return cpu::g_winograd.load(); });
  m.def("get_num_threads", &cpu::configured_threads, "Threads the kernels use.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads the kernels use.");
}
