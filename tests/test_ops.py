"""Every op of the op table, forward and backward, on random valid cases (shapes, strides,
paddings, dilations, groups, layouts, ties, activations) against the NumPy reference, with
each instruction set this CPU supports."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
