"""Smoke tests of the benchmark harness (bench/) on tiny shapes: its counts, goals, timing
loop, report and runners. No speed is asserted here; speed lives in `python -m bench.cpu`."""
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv

# bench/ is not part of the installed package; appended (not prepended) so that an installed
# fastconv still wins over the source tree.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from bench import cases, ops  # noqa: E402
from bench.cases import Case, bytes_moved, flops, goal  # noqa: E402
from bench.measure import Budget, Ceilings, median_seconds  # noqa: E402
from bench.report import MAX_RELATIVE_ERROR, Row, goal_summaries, markdown  # noqa: E402

TINY = [Case("conv", 2, 3, 4, 6), Case("conv", 2, 3, 4, 7, stride=2),
        Case("conv", 2, 2, 3, 6, k=2, pad=0), Case("pointwise", 2, 3, 5, 4, k=1, pad=0),
        Case("depthwise", 2, 3, 3, 6), Case("separable", 2, 3, 4, 6),
        Case("maxpool", 2, 3, 3, 6, k=3, stride=2, pad=1),
        Case("avgpool", 2, 3, 3, 6, k=2, stride=2, pad=0),
        Case("globalavgpool", 2, 3, 3, 5, k=5, pad=0)]


def test_counts_of_a_known_conv():
    c = Case("conv", 2, 3, 4, 5)  # 3x3, padding 1: 5x5 out
    assert c.out_size == 5
    assert flops(c, "fwd") == 2 * (2 * 4 * 25) * 3 * 9
    assert flops(c, "bwd") == 2 * flops(c, "fwd")
    x, y, params = 2 * 3 * 25, 2 * 4 * 25, 4 * 3 * 9 + 4
    assert bytes_moved(c, "fwd") == 4 * (x + params + y)
    assert bytes_moved(c, "bwd") == 4 * (y + x + params + x + params)


def test_counts_of_pools_and_depthwise():
    pool = Case("maxpool", 1, 2, 2, 32, k=3, stride=2, pad=1)
    assert pool.out_size == 16 and flops(pool, "fwd") == 2 * 16 * 16 * 9
    avg = Case("avgpool", 1, 2, 2, 4, k=2, stride=2, pad=0)
    assert bytes_moved(avg, "bwd") == 4 * (2 * 2 * 2 + 2 * 4 * 4)  # dy and dx, no x
    gap = Case("globalavgpool", 3, 2, 2, 8, k=8, pad=0)
    assert gap.out_size == 1 and flops(gap, "fwd") == 3 * 2 * 64
    dw = Case("depthwise", 1, 4, 4, 8)
    assert flops(dw, "fwd") == 2 * 4 * 64 * 9


def test_cifar_net_follows_the_stem_and_the_pools():
    convs = cases.cifar_net_convs(stem=24, widths=(32, 64), image=32, batch=8)
    assert [(c.c_in, c.c_out, c.size, c.k, c.pad) for c in convs] == [
        (3, 24, 32, 2, 0), (24, 32, 31, 3, 1), (32, 32, 15, 3, 1),
        (32, 64, 15, 3, 1), (64, 64, 7, 3, 1)]
    assert all(c.n == 8 for c in convs)


@pytest.mark.parametrize("case, pass_, minimum", [
    (Case("conv", 1, 8, 8, 8), "fwd", 1.5),
    (Case("conv", 1, 8, 8, 8, stride=2), "fwd", 1.1),
    (Case("conv", 1, 8, 8, 8, k=5, pad=2), "fwd", 1.1),
    (Case("conv", 1, 8, 8, 8), "bwd", 1.1),
    (Case("pointwise", 1, 8, 8, 8, k=1, pad=0), "fwd", 1.1),
    (Case("depthwise", 1, 8, 8, 8), "bwd", 3.0),
    (Case("avgpool", 1, 8, 8, 8, k=2, stride=2, pad=0), "bwd", 5.0),
])
def test_goals_follow_the_issue(case, pass_, minimum):
    assert goal(case, pass_).minimum == minimum


def test_bad_kind_is_refused():
    with pytest.raises(ValueError, match="unknown case kind"):
        Case("conv3d", 1, 1, 1, 4)


def test_timing_loop_obeys_its_budget():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def fn():
            calls[name] += 1
        return fn
    fns = {name: counter(name) for name in calls}
    result = median_seconds(fns, Budget(0.0, min_reps=3, max_reps=9, warmup=2))
    assert calls == {"a": 5, "b": 5} and set(result) == {"a", "b"}
    median_seconds(fns, Budget(60.0, min_reps=1, max_reps=4, warmup=0))
    assert calls == {"a": 9, "b": 9}
    assert all(s >= 0 for s in result.values())


def _row(error=0.0):
    return Row(Case("conv", 128, 64, 128, 32), "fwd", fastconv={"NCHW": 0.2, "NHWC": 0.1},
               torch={"NCHW": 0.3, "channels_last": 0.16}, error=error)


def test_row_takes_the_faster_layout_of_each_library():
    row = _row()
    assert (row.best, row.peer) == ("NHWC", "channels_last")
    assert row.ratio == pytest.approx(1.6) and row.met
    assert not _row(error=10 * MAX_RELATIVE_ERROR).met  # a wrong result meets no goal


def test_throughput_picks_the_roofline_side():
    row = _row()
    rate, unit, share = row.throughput(Ceilings(100.0, 10.0, 2048, 256, 1))
    assert unit == "GFLOP/s"
    assert rate == pytest.approx(flops(row.case, "fwd") / 0.1 / 1e9)
    assert share == pytest.approx(rate / 100.0)
    pool = Row(Case("maxpool", 1, 4, 4, 8, k=2, stride=2, pad=0), "fwd",
               fastconv={"NCHW": 1e-3}, torch={"NCHW": 2e-3})
    rate, unit, share = pool.throughput(Ceilings(100.0, 10.0, 2048, 256, 1))
    assert unit == "GB/s" and share == pytest.approx(rate / 10.0)
    rate, unit, share = row.throughput(Ceilings(100.0, 10.0, 2048, 256, 1, fma_gflops=200.0))
    assert unit == "GFLOP/s" and share == pytest.approx(rate / 200.0)  # the FMA peak, if measured


def test_report_names_the_rows_below_goal():
    slow = Row(Case("depthwise", 128, 128, 128, 16), "bwd", fastconv={"NCHW": 1.0},
               torch={"NCHW": 2.0})
    lines = goal_summaries([_row(), slow])
    assert any(line.startswith("dense conv fwd") and ": met, 1/1" in line for line in lines)
    assert any("depthwise" in line and "NOT met, 0/1" in line and "2.00x" in line
               for line in lines)
    text = markdown(["- header"], [_row(), slow], [], Ceilings(100.0, 10.0, 2048, 256, 1))
    assert "| conv 3x3 64->128 | 128x64x32x32 | fwd |" in text and "| 1.60x |" in text


def test_max_relative_error_is_relative_to_each_output():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 4.0])
    assert ops.max_relative_error([a], [b]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ops.max_relative_error([a], [b.reshape(2, 1)])


@pytest.mark.parametrize("case", TINY, ids=lambda c: f"{c.kind}-s{c.stride}-k{c.k}")
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fastconv_runner_matches_the_reference(case, pass_, layout):
    inputs = ops.make_inputs(case, seed=1)
    run, convert = ops.numpy_runner(fastconv, case, pass_, inputs, layout)
    ref_run, ref_convert = ops.numpy_runner(fastconv.reference, case, pass_, inputs, "NCHW")
    assert ops.max_relative_error(convert(run()), ref_convert(ref_run())) < 1e-5


@pytest.mark.parametrize("case", TINY, ids=lambda c: f"{c.kind}-s{c.stride}-k{c.k}")
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_runner_matches_the_reference(case, pass_, channels_last):
    pytest.importorskip("torch")
    inputs = ops.make_inputs(case, seed=2)
    run, convert = ops.torch_runner(case, pass_, inputs, channels_last)
    ref_run, ref_convert = ops.numpy_runner(fastconv.reference, case, pass_, inputs, "NCHW")
    assert ops.max_relative_error(convert(run()), ref_convert(ref_run())) < 1e-5


def test_quick_run_writes_the_report(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from bench import cpu
    cpu.main(["--quick", "--filter", "global avgpool", "--batch", "2", "--seconds", "0",
              "--out", str(tmp_path)])
    text = (tmp_path / "cpu.md").read_text()
    assert "- Machine:" in text and "sgemm" in text and "pooling fwd+bwd" in text
    assert text.count("| global avgpool | 2x128x32x32 |") == 2
    assert (tmp_path / "cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_batch_norm_bench_agrees_with_torch_and_writes_rows(tmp_path):
    pytest.importorskip("torch")
    from bench import batch_norm
    assert batch_norm.shapes(8) == [(8, 15, 15, 64), (8, 7, 7, 128), (8, 3, 3, 256)]
    batch_norm.main(["--batch", "2", "--seconds", "0", "--out", str(tmp_path)])
    rows = [l for l in (tmp_path / "batch_norm.md").read_text().splitlines() if l.startswith("| 2x")]
    assert len(rows) == 9 and {r.split(" | ")[1] for r in rows} == {"none", "relu", "gelu"}
    assert max(float(r.rstrip(" |").split(" | ")[-1]) for r in rows) < 1e-4  # agrees with torch
