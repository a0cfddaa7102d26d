// fastconv._cpu: the CPU kernels behind the op list of op_bindings.h, plus the machine
// controls (instruction set, threads, Winograd).
//
// Each kernel is compiled once per instruction set (see CMakeLists.txt); the import picks
// the best one this CPU supports, FASTCONV_ISA overrides it. Kernels run with the GIL
// released; a call too small to share runs on the calling thread alone.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "binding_support.h"
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
std::atomic<bool> g_avx2{false};
std::atomic<bool> g_winograd{true};
std::string g_isa_reason;

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
// on a busy one; below about 2^21 multiply-adds (or 2^19 elements of a memory-bound op) a
// call runs on the calling thread alone.
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

constexpr int64_t kComputeSerialWork = int64_t{1} << 21, kMemorySerialWork = int64_t{1} << 19;

// (work, the work below which a call runs serially) of a call.
std::pair<int64_t, int64_t> work(const ConvGeometry& g) {
  return {g.y_size() * g.cin_per_group() * g.kh * g.kw, kComputeSerialWork};
}
std::pair<int64_t, int64_t> work(const PoolGeometry& g) { return {g.x_size(), kMemorySerialWork}; }
std::pair<int64_t, int64_t> work(const NormGeometry& g) { return {g.size(), kMemorySerialWork}; }

// How op_bindings.h reads buffers and runs kernels here.
struct Backend {
  struct Launch {};
  static fastconv::bindings::View view(const py::handle& object, const char* name) {
    return fastconv::bindings::host_view(object, name);
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

// The AVX2 build of a kernel where the CPU has it, the generic build elsewhere.
#if FASTCONV_HAVE_AVX2
#define FASTCONV_KERNEL(name)                                                                \
  [](auto&, const auto& g, auto*... buffers) {                                               \
    cpu::g_avx2.load() ? cpu::avx2::name(g, buffers...) : cpu::generic::name(g, buffers...); \
  }
#else
#define FASTCONV_KERNEL(name) \
  [](auto&, const auto& g, auto*... buffers) { cpu::generic::name(g, buffers...); }
#endif
#include "op_bindings.h"

namespace {

std::vector<std::string> supported_isas() {
  std::vector<std::string> isas;
  if (cpu::cpu_has_avx2()) isas.push_back("avx2");
  isas.push_back("generic");
  return isas;
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

void choose_isa() {
  const char* forced = std::getenv("FASTCONV_ISA");
  if (forced) {
    set_isa(forced);
    cpu::g_isa_reason = std::string("forced by FASTCONV_ISA=") + forced;
  } else if (cpu::cpu_has_avx2()) {
    set_isa("avx2");
    cpu::g_isa_reason = "the CPU supports AVX2 and FMA";
  } else {
    set_isa("generic");
    cpu::g_isa_reason = "the CPU (or this build) has no AVX2/FMA";
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
  choose_isa();
  fastconv::bindings::bind_ops<Backend>(m);
  m.def(
      "isa", [] { return std::string(cpu::g_avx2 ? "avx2" : "generic"); },
      "The instruction set the kernels run with.");
  m.def("isa_reason", [] { return cpu::g_isa_reason; }, "Why the import chose that one.");
  m.def("supported_isas", &supported_isas,
        "Instruction sets this CPU and build can run, best first.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Run the kernels of another supported instruction set (for testing each one).");
  m.def(
      "set_winograd", [](bool on) { cpu::g_winograd = on; }, py::arg("enabled"),
      "Use Winograd F(4x4,3x3) for 3x3 stride-1 convolutions (default on).");
  m.def("winograd", [] { return cpu::g_winograd.load(); });
  m.def("get_num_threads", &cpu::configured_threads, "Threads the kernels use.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads the kernels use.");
}
