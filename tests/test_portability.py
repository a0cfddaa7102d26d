"""The module must load and give right answers on CPUs older than this one. Its AVX2 and
AVX-512 kernel builds live in the same module as the portable one, so a function they share
(an inline helper, a std:: template) linked from an AVX object, or an AVX instruction run
before the ISA choice, would crash an older CPU. qemu's user-mode emulator runs Python as
such a CPU and faults on every instruction the CPU model lacks, like the real one would."""

import os
import shutil
import subprocess
import sys

import pytest

qemu = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(
    qemu is None or os.uname().machine != "x86_64",
    reason="qemu-user (qemu-x86_64) is not installed",
)


@pytest.mark.parametrize("cpu, isa", [("Nehalem", "generic"), ("Haswell", "avx2")])
def test_fastconv_check_passes_on_an_older_cpu(cpu, isa, tmp_path):
    """Nehalem has no AVX at all, Haswell AVX2 but no AVX-512: the import picks the best
    build the emulated CPU has, and every op agrees with the reference. NumPy's OpenBLAS is
    told the CPU by name: its own detection, under qemu on an AMD Zen 5 host, took a kernel
    with AVX for Nehalem, and `import numpy` faulted before fastconv was reached."""
    run = subprocess.run(
        [qemu, "-cpu", cpu, sys.executable, "-m", "fastconv", "check", "--cases", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,  # away from a source checkout's fastconv/
        env=dict(os.environ, OPENBLAS_CORETYPE=cpu),
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"cpu/{isa} " in run.stdout and "cpu/avx512" not in run.stdout
    assert "all ops agree with the reference" in run.stdout
