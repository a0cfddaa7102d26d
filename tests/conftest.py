"""Test configuration: the hypothesis profile and the instruction-set fixture. Shared cases,
strategies and tolerances live in op_cases.py."""
import pytest
from hypothesis import HealthCheck, settings

import fastconv

settings.register_profile("fastconv", deadline=None, derandomize=True, max_examples=150,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile("fastconv")


@pytest.fixture(params=["avx2", "generic"])
def isa(request):
    """Runs a test with the AVX2 kernels and again with the portable ones."""
    if request.param == "avx2":
        try:
            fastconv._cpu.set_isa("avx2")
        except ValueError:
            pytest.skip("this CPU has no AVX2/FMA")
    else:
        fastconv._cpu.set_isa("generic")
    yield request.param
    fastconv._cpu.set_isa("avx2" if _has_avx2() else "generic")


def _has_avx2():
    try:
        fastconv._cpu.set_isa("avx2")
        return True
    except ValueError:
        return False
