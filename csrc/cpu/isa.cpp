// Run-time choice of the kernel build (see isa.h).
#include "cpu/isa.h"

#include <atomic>
#include <cstdint>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define FASTCONV_X86 1
#endif

namespace fastconv::cpu {
namespace {

#ifdef FASTCONV_X86
// XCR0, or 0 where the OS has not enabled XSAVE (then XGETBV itself would fault).
uint64_t read_xcr0() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return 0;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));  // no -mxsave needed
  return (uint64_t{hi} << 32) | lo;
}
#endif

constexpr uint64_t kXcr0Avx = 0x6;      // SSE (bit 1) and AVX upper halves (bit 2)
constexpr uint64_t kXcr0Avx512 = 0xE0;  // opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7)

std::atomic<Isa> g_isa{Isa::generic};
std::string g_reason = "not chosen yet";  // written and read under the GIL only

std::string forced_reason(Isa isa) {
  return std::string("forced by FASTCONV_ISA=") + isa_name(isa);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "generic";
  }
}

bool parse_isa(const std::string& name, Isa& isa) {
  for (Isa candidate : {Isa::avx512, Isa::avx2, Isa::generic})
    if (name == isa_name(candidate)) {
      isa = candidate;
      return true;
    }
  return false;
}

namespace {

IsaFeatures read_features() {
  IsaFeatures f;
#ifdef FASTCONV_X86
  f.built_avx2 = FASTCONV_HAVE_AVX2 != 0;
  f.built_avx512 = FASTCONV_HAVE_AVX512 != 0;
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  const uint64_t xcr0 = read_xcr0();
  f.os_avx = (xcr0 & kXcr0Avx) == kXcr0Avx;
  f.os_avx512 = f.os_avx && (xcr0 & kXcr0Avx512) == kXcr0Avx512;
#endif
  return f;
}

}  // namespace

// Read once: a CPUID in a virtual machine exits to the hypervisor (set_isa took 12 us).
IsaFeatures detect_features() {
  static const IsaFeatures features = read_features();
  return features;
}

std::string isa_missing(const IsaFeatures& f, Isa isa) {
  if (isa == Isa::generic) return "";
  if (isa == Isa::avx2) {
    if (!f.built_avx2) return "this build of fastconv has no AVX2 kernels (not an x86-64 build)";
    if (!f.avx2) return "the CPU lacks AVX2";
    if (!f.fma) return "the CPU lacks FMA";
    if (!f.os_avx) return "the OS does not enable the AVX register state (XCR0)";
    return "";
  }
  if (!f.built_avx512) return "this build of fastconv has no AVX-512 kernels (not an x86-64 build)";
  const std::pair<bool, const char*> needed[] = {{f.avx512f, "AVX-512F"},
                                                 {f.avx512bw, "AVX-512BW"},
                                                 {f.avx512dq, "AVX-512DQ"},
                                                 {f.avx512vl, "AVX-512VL"},
                                                 {f.fma, "FMA"}};
  for (const auto& [present, name] : needed)
    if (!present) return std::string("the CPU lacks ") + name;
  if (!f.os_avx512) return "the OS does not enable the AVX-512 register state (opmask/ZMM in XCR0)";
  return "";
}

std::vector<Isa> supported_isas(const IsaFeatures& f) {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::generic})
    if (isa_missing(f, isa).empty()) out.push_back(isa);
  return out;
}

IsaChoice choose_isa(const IsaFeatures& f, const char* forced) {
  if (forced && *forced) {
    Isa isa;
    if (!parse_isa(forced, isa))
      throw std::invalid_argument(
          std::string("FASTCONV_ISA must be 'avx512', 'avx2' or 'generic', got '") + forced + "'");
    const std::string missing = isa_missing(f, isa);
    if (!missing.empty())
      throw std::invalid_argument(std::string("FASTCONV_ISA=") + forced +
                                  " cannot run here: " + missing);
    return {isa, forced_reason(isa)};
  }
  // The best usable ISA; the reason names what stopped each better one.
  const std::string no512 = isa_missing(f, Isa::avx512);
  if (no512.empty()) return {Isa::avx512, "avx512: the CPU and OS support AVX-512F/BW/DQ/VL"};
  const std::string no2 = isa_missing(f, Isa::avx2);
  if (no2.empty()) return {Isa::avx2, "avx2: " + no512};
  return {Isa::generic, "generic: " + no2};
}

Isa active_isa() { return g_isa.load(std::memory_order_relaxed); }
const std::string& active_isa_reason() { return g_reason; }

void set_active_isa(const IsaChoice& choice) {
  g_isa.store(choice.isa, std::memory_order_relaxed);
  g_reason = choice.reason;
}

}  // namespace fastconv::cpu
