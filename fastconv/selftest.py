"""`fastconv check`: every op of the op table and its backward, on small random shapes,
against the NumPy reference, on every instruction set this CPU supports and on the GPU if
there is one. One line per op and backend; the verdict is False on any mismatch."""

from __future__ import annotations

import contextlib
import time

import numpy as np

from . import _cpu, ops
from ._gpu import available as cuda_available


@contextlib.contextmanager
def _isa(name):
    previous = _cpu.isa()
    _cpu.set_isa(name)
    try:
        yield
    finally:
        _cpu.set_isa(previous)


def _backends():
    """(label, context, dev, host) for every backend this machine can run."""
    for isa in _cpu.supported_isas():
        yield f"cpu/{isa}", lambda isa=isa: _isa(isa), (lambda a: a), np.asarray
    ok, why = cuda_available()
    if ok:
        import cupy

        yield "cuda", contextlib.nullcontext, cupy.asarray, cupy.asnumpy
    else:
        yield "cuda", None, why, None


def _check_op(op, dev, host, cases, seed):
    rng = np.random.default_rng([seed, len(op.name)])
    verdict = ops.Verdict(op.name)
    for _ in range(cases):
        case = op.draw_case(rng)
        worst, bad = ops.check(op, case, dev=dev, host=host)
        verdict.cases += 1
        verdict.worst = max(verdict.worst, worst)
        if bad is not None:
            verdict.failure = f"{bad} differs on {case!r}"
            break
    return verdict


def run(cases=12, seed=0, print_fn=print) -> bool:
    began, all_ok = time.perf_counter(), True
    for label, context, dev, host in _backends():
        if context is None:
            print_fn(f"{label:<12} skipped: {dev}")
            continue
        with context():
            for op in ops.OPS.values():
                v = _check_op(op, dev, host, cases, seed)
                all_ok &= v.ok
                status = (
                    "ok" if v.ok else "MISMATCH"
                ) + f"  worst error {v.worst:.2g} of tolerance"
                print_fn(
                    f"{label:<12} {op.name:<22} {v.cases:>3} cases  {status}"
                    + ("" if v.ok else f"\n    {v.failure}")
                )
    print_fn(
        f"{'all ops agree with the reference' if all_ok else 'MISMATCHES FOUND'} "
        f"({time.perf_counter() - began:.1f} s)"
    )
    return all_ok
