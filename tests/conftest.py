"""Shared test helpers: tolerances, random arrays and hypothesis strategies for op configs."""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import fastconv

settings.register_profile("fastconv", deadline=None, derandomize=True, max_examples=150,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile("fastconv")


def assert_close(actual, expected, rtol=1e-4, atol=2e-5):
    """float32 kernel vs float64-accumulating reference: |a - r| <= atol*(1 + max|r|) + rtol*|r|.
    The scale term keeps the bound meaningful for sums of many terms."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.float32
    scale = 1.0 + float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


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


paddings = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3))),
    st.sampled_from(["valid", "same"]),
)
layouts = st.sampled_from(["NCHW", "NHWC"])
pairs = lambda lo, hi: st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))
