"""Test configuration: the hypothesis profile and the instruction-set fixture. Shared cases,
strategies and tolerances live in op_cases.py."""
import pytest
from hypothesis import HealthCheck, settings

import fastconv

settings.register_profile("fastconv", deadline=None, derandomize=True, max_examples=150,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile("fastconv")


@pytest.fixture(params=["avx512", "avx2", "generic"])
def isa(request):
    """Runs a test once with each instruction set's kernels that this CPU supports."""
    if request.param not in fastconv._cpu.supported_isas():
        pytest.skip(f"this CPU or build has no {request.param} kernels")
    previous = fastconv._cpu.isa()
    fastconv._cpu.set_isa(request.param)
    yield request.param
    fastconv._cpu.set_isa(previous)
