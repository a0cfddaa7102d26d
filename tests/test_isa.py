"""The run-time choice of kernel build: supported ISAs, the reason, the FASTCONV_ISA override."""

import os
import subprocess
import sys
import tempfile

import pytest

import fastconv


def _import_with(env_isa):
    """(returncode, isa, reason, stderr) of a fresh interpreter importing fastconv."""
    env = dict(os.environ, FASTCONV_ISA=env_isa)
    code = "import fastconv; print(fastconv.isa()); print(fastconv._cpu.isa_reason())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )  # away from a source checkout's fastconv/, which `-c` would put first on sys.path
    lines = done.stdout.splitlines() + ["", ""]
    return done.returncode, lines[0], lines[1], done.stderr


def test_supported_isas_best_first():
    supported = fastconv._cpu.supported_isas()
    assert supported[-1] == "generic"
    order = ["avx512", "avx2", "generic"]
    assert supported == sorted(supported, key=order.index)
    if "avx512" in supported:
        assert "avx2" in supported  # AVX-512F/BW/DQ/VL and FMA imply AVX2 on every CPU


def test_default_is_the_best_supported_with_a_reason():
    returncode, isa, reason, stderr = _import_with("")
    assert returncode == 0, stderr
    best = fastconv._cpu.supported_isas()[0]
    assert isa == best
    assert reason.startswith(best + ": ")
    if best == "avx512":
        assert reason == "avx512: the CPU and OS support AVX-512F/BW/DQ/VL"
    else:
        assert "lacks" in reason or "does not enable" in reason or "no AVX" in reason


@pytest.mark.parametrize("name", ["avx512", "avx2", "generic"])
def test_forced_isa(name):
    returncode, isa, reason, stderr = _import_with(name)
    if name in fastconv._cpu.supported_isas():
        assert returncode == 0, stderr
        assert (isa, reason) == (name, f"forced by FASTCONV_ISA={name}")
    else:  # an unsupported request fails the import and says what is missing
        assert returncode != 0
        assert f"FASTCONV_ISA={name} cannot run here" in stderr
        assert "lacks" in stderr or "does not enable" in stderr or "no AVX" in stderr


def test_unknown_forced_isa_fails_the_import():
    returncode, _, _, stderr = _import_with("avx1024")
    assert returncode != 0
    assert "FASTCONV_ISA must be 'avx512', 'avx2' or 'generic', got 'avx1024'" in stderr


def test_set_isa():
    before = fastconv._cpu.isa()
    try:
        for name in fastconv._cpu.supported_isas():
            fastconv._cpu.set_isa(name)
            assert fastconv._cpu.isa() == name
            assert fastconv._cpu.isa_reason() == f"set by set_isa('{name}')"
        with pytest.raises(ValueError, match="isa must be"):
            fastconv._cpu.set_isa("sse")
        for name in {"avx512", "avx2"} - set(fastconv._cpu.supported_isas()):
            with pytest.raises(ValueError, match="cannot run here"):
                fastconv._cpu.set_isa(name)
    finally:
        fastconv._cpu.set_isa(before)
