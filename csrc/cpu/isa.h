// Which build of the CPU kernels runs: the instruction sets, what the CPU and the operating
// system support, the default choice and the FASTCONV_ISA override. Compiled once, with the
// baseline flags, into fastconv._cpu: it must run on any CPU before anything else is chosen.
//
// An ISA is usable when the kernels were built for it (x86-64 builds have all three), the
// CPU reports its instructions (CPUID, through __builtin_cpu_supports) and the OS saves its
// registers on a context switch (XCR0, read with XGETBV): a CPU with AVX-512 under an OS or
// hypervisor that does not enable the ZMM state faults on the first AVX-512 instruction.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fastconv::cpu {

// Ordered from the most portable to the most capable.
enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);

// The GEMM register tile of each build (gemm.h): MR rows x NR columns of C. Here so that
// the algorithm selector, compiled once, knows every build's shape.
struct GemmTile {
  int64_t mr, nr;
};
constexpr GemmTile gemm_tile(Isa isa) {
  return isa == Isa::avx512 ? GemmTile{8, 32} : GemmTile{6, 16};
}
// Parses "avx512", "avx2" or "generic"; false for anything else.
bool parse_isa(const std::string& name, Isa& isa);

// What this machine offers, as read by detect_features(); a plain struct so that the
// choice below is a pure function of it.
struct IsaFeatures {
  bool built_avx2 = false, built_avx512 = false;  // kernels compiled into this module
  bool avx2 = false, fma = false;                 // CPUID
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool os_avx = false;     // XCR0 enables the SSE and AVX (YMM) state
  bool os_avx512 = false;  // XCR0 also enables the opmask, ZMM_Hi256 and Hi16_ZMM state
};
IsaFeatures detect_features();

// "" if `isa` can run here, else what is missing, e.g. "the CPU lacks AVX-512BW".
std::string isa_missing(const IsaFeatures& f, Isa isa);

// The choice of kernels and the sentence that explains it.
struct IsaChoice {
  Isa isa;
  std::string reason;
};

// The best usable ISA, or the one `forced` names (FASTCONV_ISA; null or empty: none).
// Throws std::invalid_argument for an unknown name or an ISA this machine cannot run.
IsaChoice choose_isa(const IsaFeatures& f, const char* forced);

// The usable ISAs, best first.
std::vector<Isa> supported_isas(const IsaFeatures& f);

// The kernels the module runs now; set at import, changed by set_isa() for tests.
Isa active_isa();
const std::string& active_isa_reason();
void set_active_isa(const IsaChoice& choice);

}  // namespace fastconv::cpu
