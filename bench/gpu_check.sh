#!/usr/bin/env bash
# The whole GPU check in one go, for a machine with an NVIDIA GPU and no internet whose python3
# already has CuPy, PyTorch (CUDA), pybind11, scikit-build-core, CMake and ninja:
#   1. build fastconv (with fastconv._cuda) without build isolation, into a private folder
#   2. run the GPU tests, the CUDA-harness tests and the _cuda module tests
#   3. compute-sanitizer memcheck, racecheck, synccheck and initcheck over a small set of GPU
#      tests (CuPy's pool off, so that every buffer is its own allocation and an overrun is
#      caught), where available; any report fails the stage
#   4. the GPU benchmark against PyTorch/cuDNN, its table written as markdown to $OUT
# Every stage has a time limit (the whole script stays under ~7.5 minutes) and the script
# goes on after a failed stage, so one run reports everything; it exits non-zero if any
# stage failed. Logs and the table go to $OUT (default: ./gpu-check-out).
#
#   bash bench/gpu_check.sh            # from the repository root or anywhere
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
work="$(mktemp -d)"
site="$work/site"
py="${PYTHON:-python3}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# Tests run from $work: a checkout on sys.path would shadow the built package.
cd "$work"

declare -a summary=()
failed=0
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log
  local name="$1" limit="$2"
  shift 2
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - start))")")
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  (command -v nvcc || ls /usr/local/cuda/bin/nvcc) 2>&1 && \
    "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" --version | tail -2
  "$py" -c "import sys, cupy, torch, numpy; print('python', sys.version.split()[0], \
'| cupy', cupy.__version__, '| torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), '| numpy', numpy.__version__)"
} 2>&1 | tee "$out/versions.txt"

# nvcc may be installed but not on PATH.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

if stage build 150 "$py" -m pip install --no-build-isolation --no-deps --target "$site" \
    -v "$repo"; then
  "$py" -c "import fastconv; print('cuda_available:', fastconv.cuda_available())" \
    2>&1 | tee -a "$out/build.log"
fi

stage tests 120 "$py" -m pytest "$repo/tests/test_gpu.py" "$repo/tests/test_cuda_module.py" \
  "$repo/tests/test_cuda_harness.py" -q -ra -p no:cacheprovider --durations=10

sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
# A small set that reaches every kernel family: both GEMM tile sizes with several
# backward-weight splits, the strided/grouped tiles, a wide pooling window, the NHWC
# depthwise weight gradient, batch norm's split reductions and the non-finite-weight path.
small_set='(large_tiles and (130 or 16-144 or 24-40)) or (depthwise_weight_splits and NHWC) or (pooling_bigger and (8-9 or 9-8)) or batch_norm_nan or infinite_weight or empty'
if [ -x "$sanitizer" ]; then
  for tool in memcheck racecheck synccheck initcheck; do
    stage "$tool" 100 "$sanitizer" --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$py" -c "
import sys, cupy, pytest
cupy.cuda.set_allocator(None)  # exact-size allocations: an overrun is a memcheck error
sys.exit(pytest.main(['$repo/tests/test_gpu.py', '-q', '-x', '-p', 'no:cacheprovider',
                      '-k', '$small_set']))"
  done
else
  summary+=("sanitizers skipped: no compute-sanitizer")
fi

stage bench 100 "$py" -m fastconv.bench.gpu --out "$out/gpu-bench.md"

echo "=== summary (logs and table in $out)"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
rm -rf "$work"
exit "$failed"
