"""Test configuration: the hypothesis profile and the instruction-set fixture. Shared cases,
strategies and tolerances live in op_cases.py."""

import pytest
from hypothesis import HealthCheck, settings

import fastconv

settings.register_profile(
    "fastconv",
    deadline=None,
    derandomize=True,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("fastconv")

ISAS = ("avx512", "avx2", "generic")
_IMPORT_ISA = fastconv._cpu.isa()  # what the import chose (or FASTCONV_ISA forced)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs a test once per kernel build this machine supports (AVX-512, AVX2, portable)."""
    if request.param not in fastconv._cpu.supported_isas():
        pytest.skip(f"this machine cannot run the {request.param} kernels")
    fastconv._cpu.set_isa(request.param)
    yield request.param
    fastconv._cpu.set_isa(_IMPORT_ISA)
