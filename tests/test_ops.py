"""Every op of the op table, forward and backward, on random valid cases (shapes, strides,
paddings, dilations, groups, layouts, ties, activations) against the NumPy reference, with
each instruction set this CPU supports."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import ops

from op_cases import CPU_LIMITS, HypothesisDraw, check_case, examples, ops_with


@pytest.mark.parametrize("op", ops_with())
@settings(max_examples=examples(80))
@given(data=st.data())
def test_op_matches_reference(isa, op, data):
    check_case(op, op.sample(HypothesisDraw(data), CPU_LIMITS))


@pytest.mark.parametrize("op", ops_with())
@settings(max_examples=examples(20))
@given(data=st.data())
def test_op_table_knows_the_output_shapes(op, data):
    case = op.sample(HypothesisDraw(data), CPU_LIMITS)
    got = {name: tuple(a.shape) for name, a in op.forward(case).items()}
    assert got == {name: tuple(shape) for name, shape in op.shapes(case).items()}


@pytest.mark.parametrize("op", ops_with(lambda op: op.layer_backward is not None))
@settings(max_examples=examples(40))
@given(data=st.data())
def test_layer_backward_gives_the_backward_gradients(isa, op, data):
    """The backward fastconv's layers run from what their training forward keeps (max
    pooling: the argmax; separable: the depthwise output) gives the op's backward's numbers,
    bit for bit: the same kernels on the same values."""
    case = op.sample(HypothesisDraw(data), CPU_LIMITS)
    layer_backward = op.layer_backward(case, fastconv)
    if layer_backward is None:  # a window too large for a byte of argmax
        return
    forward = op.forward(case)
    dy = np.random.default_rng(3).standard_normal(forward["y"].shape).astype(np.float32)
    want = op.backward(case, dy, forward)
    got = layer_backward(dy)
    for name in op.grads:
        if want.get(name) is None:
            assert got.get(name) is None, name
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("op", ops_with())
def test_large_outputs_start_on_a_cache_line(op):
    """Host outputs of 16 KiB and more are 64-byte aligned (a zmm load or store never splits
    a cache line) and are ordinary writable C-contiguous float32 arrays."""
    rng = np.random.default_rng(0)
    limits = ops.Limits(max_batch=8, max_channels=32, max_side=40, max_kernel=3)
    large = []
    while len(large) < 3:
        case = op.draw_case(rng, limits)
        forward = op.forward(case)
        outputs = list(forward.values())
        if op.backward_args is not None:
            dy = np.ones(forward["y"].shape, np.float32)
            outputs += op.backward(case, dy, forward).values()
        large += [a for a in outputs if a is not None and a.nbytes >= 16 << 10]
    for a in large:
        assert a.ctypes.data % 64 == 0
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
