"""Smoke tests of the benchmark harness (bench/, installed as fastconv.bench) on tiny shapes:
its layers, goals, timing loop, report and runners. No speed is asserted here; speed lives
in `fastconv bench`."""

import numpy as np
import pytest

import fastconv
from fastconv import ops
from fastconv.bench import cases, runners
from fastconv.bench.cases import Layer, minimum_ratio
from fastconv.bench.measure import Budget, Ceilings, median_seconds, sample_seconds
from fastconv.bench.report import MAX_RELATIVE_ERROR, Row, geometric_mean, markdown, summary

TINY = [
    Layer("conv2d", 2, 3, 4, 6),
    Layer("conv2d", 2, 3, 4, 7, stride=2),
    Layer("conv2d", 2, 2, 3, 6, k=2, pad=0),
    Layer("pointwise_conv2d", 2, 3, 5, 4, k=1, pad=0),
    Layer("depthwise_conv2d", 2, 3, 3, 6),
    Layer("separable_conv2d", 2, 3, 4, 6),
    Layer("max_pool2d", 2, 3, 3, 6, k=3, stride=2, pad=1),
    Layer("avg_pool2d", 2, 3, 3, 6, k=2, stride=2, pad=0),
    Layer("global_avg_pool2d", 2, 3, 3, 5, k=5, pad=0),
    Layer("batch_norm", 2, 3, 3, 5, activation="gelu"),
]
CEILINGS = Ceilings(100.0, 10.0, 2048, 256, 1, {"avx2": 80.0})


def test_ceilings_keep_the_higher_of_two_measurements():
    """A measurement that caught the cores at half speed does not lower a ceiling."""
    slow = Ceilings(90.0, 20.0, 2048, 256, 2, {"avx2": 40.0, "avx512": 240.0})
    fast = Ceilings(80.0, 30.0, 2048, 256, 1, {"avx2": 45.0, "avx512": 480.0})
    both = slow.highest(fast)
    assert (both.sgemm_gflops, both.copy_gbs, both.copy_threads) == (90.0, 30.0, 1)
    assert both.fma_gflops == {"avx2": 45.0, "avx512": 480.0}
    assert both == fast.highest(slow)


def test_every_op_family_is_benchmarked():
    timed = {layer.op for layer in cases.all_layers()}
    assert timed >= {
        "conv2d",
        "pointwise_conv2d",
        "depthwise_conv2d",
        "separable_conv2d",
        "max_pool2d",
        "avg_pool2d",
        "global_avg_pool2d",
        "batch_norm",
    }


def test_counts_of_a_known_conv_come_from_the_op_table():
    case = Layer("conv2d", 2, 3, 4, 5).case()  # 3x3, padding 1: 5x5 out
    assert case.op.flops(case, "forward") == 2 * (2 * 4 * 25) * 3 * 9
    assert case.op.flops(case, "backward") == 2 * case.op.flops(case, "forward")
    x, y, params = 2 * 3 * 25, 2 * 4 * 25, 4 * 3 * 9 + 4
    assert case.op.bytes(case, "forward") == 4 * (x + params + y)
    assert case.op.bytes(case, "backward") == 4 * (y + x + params + x + params)


def test_cifar_net_follows_the_stem_and_the_pools():
    layers = cases.cifar_net(stem=24, widths=(32, 64), image=32, batch=8)
    convs = [(c.c_in, c.c_out, c.size, c.k, c.pad) for c in layers if c.op == "conv2d"]
    assert convs == [
        (3, 24, 32, 2, 0),
        (24, 32, 31, 3, 1),
        (32, 32, 15, 3, 1),
        (32, 64, 15, 3, 1),
        (64, 64, 7, 3, 1),
    ]
    assert [(b.c_in, b.size) for b in layers if b.op == "batch_norm"] == [(32, 15), (64, 7)]
    assert all(c.n == 8 for c in layers)


@pytest.mark.parametrize(
    "layer, direction, minimum",
    [
        (Layer("conv2d", 1, 8, 8, 8), "forward", 1.8),
        (Layer("conv2d", 1, 8, 8, 8), "backward", 1.3),
        (Layer("conv2d", 1, 8, 8, 8, stride=2), "forward", 1.0),
        (Layer("conv2d", 1, 8, 8, 8, k=5, pad=2), "forward", 1.0),
        (Layer("depthwise_conv2d", 1, 8, 8, 8), "backward", 1.0),
    ],
)
def test_goals(layer, direction, minimum):
    assert minimum_ratio(layer, direction) == minimum


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="unknown op"):
        Layer("conv3d", 1, 1, 1, 4)


def test_timing_loop_obeys_its_budget():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def fn():
            calls[name] += 1

        return fn

    fns = {name: counter(name) for name in calls}
    result = median_seconds(fns, Budget(0.0, min_reps=3, max_reps=9, warmup=2, settle=0.0))
    assert calls == {"a": 5, "b": 5} and set(result) == {"a", "b"}
    median_seconds(fns, Budget(60.0, min_reps=1, max_reps=4, warmup=0, settle=0.0))
    assert calls == {"a": 9, "b": 9}


def test_each_timed_call_follows_untimed_calls_of_the_same_contender():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "ab"}
    samples = sample_seconds(fns, Budget(0.0, min_reps=2, max_reps=2, warmup=0, settle=0.002))
    assert [len(times) for times in samples.values()] == [2, 2]
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert runs == ["a", "b", "a", "b"]  # contenders still take turns, round by round
    assert len(order) > 8  # each timed call came after untimed ones


def _row(error=0.0, ratio_avx2=1.6):
    layer = Layer("conv2d", 128, 64, 128, 32, stride=2)
    case = layer.case()
    return Row(
        layer,
        "forward",
        fastconv={"avx2": {"NCHW": 0.2, "NHWC": 0.1}, "generic": {"NCHW": 0.4, "NHWC": 0.5}},
        torch={"NCHW": 0.3, "channels_last": 0.1 * ratio_avx2},
        flops=case.op.flops(case, "forward"),
        bytes=case.op.bytes(case, "forward"),
        error=error,
    )


def test_row_takes_the_faster_layout_of_each_contender():
    row = _row()
    assert row.best() == ("NHWC", 0.1) and row.best("generic") == ("NCHW", 0.4)
    assert row.peer[0] == "channels_last"
    assert row.ratio() == pytest.approx(1.6) and row.ratio("generic") == pytest.approx(0.4)
    assert row.met and not _row(error=10 * MAX_RELATIVE_ERROR).met
    assert not _row(ratio_avx2=0.9).met


def test_each_row_names_the_algorithm_of_its_faster_layout():
    conv = Layer("conv2d", 8, 64, 128, 32)  # 3x3 stride 1: Winograd with every ISA
    forward = cases.conv_algorithms(conv.case(), "forward")
    backward = cases.conv_algorithms(conv.case().in_layout("NHWC"), "backward")
    assert forward.startswith("winograd") and backward.startswith("dx ") and ", dw " in backward
    pool = Layer("max_pool2d", 1, 4, 4, 8, k=2, stride=2, pad=0)
    assert cases.conv_algorithms(pool.case(), "forward") == ""
    row = _row()
    row.algorithms = {"NCHW": "gemm_nchw", "NHWC": "winograd_f4x3"}
    assert row.algorithm == "winograd_f4x3" and row.winograd  # NHWC is the faster layout
    row.algorithms = {"NCHW": "winograd_f4x3", "NHWC": "gemm_nhwc"}
    assert not row.winograd


def test_throughput_against_the_isa_peak_or_the_copy_bandwidth():
    row = _row()
    rate, unit, share, ceiling = row.throughput(CEILINGS)
    assert unit == "GFLOP/s" and ceiling == "avx2 FMA peak"
    assert rate == pytest.approx(row.flops / 0.1 / 1e9) and share == pytest.approx(rate / 80.0)
    pool = Layer("max_pool2d", 1, 4, 4, 8, k=2, stride=2, pad=0)
    case = pool.case()
    row = Row(
        pool,
        "forward",
        fastconv={"avx2": {"NCHW": 1e-3}},
        torch={"NCHW": 2e-3},
        flops=case.op.flops(case, "forward"),
        bytes=case.op.bytes(case, "forward"),
    )
    rate, unit, share, _ = row.throughput(CEILINGS)
    assert unit == "GB/s" and share == pytest.approx(rate / 10.0)


def test_route_cost_compares_fastconv_torch_with_fastconv_in_fastconvs_layout():
    row = _row()
    assert row.route_cost() is None
    row.fastconv_torch, row.route_ratio = {"NCHW": 0.2, "NHWC": 0.11}, {"NCHW": 1.0, "NHWC": 1.1}
    assert row.route_cost() == pytest.approx(0.1)  # fastconv's faster layout is NHWC (0.1 s)
    lines = summary([row], CEILINGS)
    assert any("+10.0% over all 1 rows" in line and "above +5%: 1/1" in line for line in lines)
    text = markdown(["- header"], [row], [], CEILINGS)
    assert "| fastconv.torch ms | route cost |" in text and "| 110.0 NHWC | +10.0% |" in text


def test_report_names_the_rows_below_goal():
    lines = summary([_row(), _row(ratio_avx2=0.5)], CEILINGS)
    assert any(
        "geometric mean" in line and f"{geometric_mean([1.6, 0.5]):.2f}x" in line for line in lines
    )
    assert any("1/2" in line and "0.50x" in line for line in lines)
    text = markdown(["- header"], [_row()], [], CEILINGS)
    assert "| conv 3x3/s2 64->128 | 128x64x32x32 | fwd |" in text and "| 1.60x |" in text


def test_report_compares_each_isa_with_the_baseline_build():
    faster, slower, untimed = _row(), _row(), _row()
    faster.fastconv["base"] = {"NCHW": 0.3}  # avx2 0.1 s, generic 0.4 s
    slower.fastconv["base"] = {"NHWC": 0.08}
    rows = [faster, slower, untimed]
    lines = [line for line in summary(rows, CEILINGS) if "against the baseline" in line]
    assert len(lines) == 2  # avx2 and generic; base is not compared with itself
    avx2, generic = lines
    assert f"over 2 rows {geometric_mean([3.0, 0.8]):.2f}x" in avx2
    assert "slower than base: 1/2 (conv 3x3/s2 64->128 @32 fwd 0.80x)" in avx2
    assert "slower than base: 2/2" in generic
    text = markdown(["- header"], rows, [], CEILINGS)
    assert "| fastconv base ms |" in text and "| 300.0 NCHW |" in text
    assert text.count("| 100.0 NHWC | 400.0 NCHW | - |") == 1  # the row base did not run


def test_baseline_package_runs_through_its_own_python_layer(tmp_path):
    """A copy of the installed package under the baseline's private name computes what
    fastconv computes, and the runner times it in a 'base' column."""
    import shutil
    from pathlib import Path

    pytest.importorskip("torch")
    from fastconv.bench import runner

    copy = tmp_path / "fastconv"
    shutil.copytree(
        Path(fastconv.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "bench")
    )
    for built in Path(fastconv._cpu.__file__).parent.glob("_*.*"):  # editable installs
        shutil.copy(built, copy)
    baseline = runner.load_baseline(copy)
    assert (
        baseline.__name__ == runner.BASELINE_MODULE
        and baseline.functional is not fastconv.functional
    )
    layer = Layer("conv2d", 2, 3, 4, 6)
    row = runner.time_row(
        layer, "backward", ["generic"], ["NCHW"], Budget(0.0, 1, 1, warmup=0, settle=0), baseline
    )
    assert set(row.fastconv) == {"generic", "base"} and row.error < 1e-4
    with pytest.raises(SystemExit, match="not a fastconv package"):
        runner.load_baseline(tmp_path)


def test_max_relative_error_is_relative_to_each_output():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 4.0])
    assert runners.max_relative_error([a], [b]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        runners.max_relative_error([a], [b.reshape(2, 1)])


@pytest.mark.parametrize("layer", TINY, ids=lambda layer: layer.label)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fastconv_runner_matches_the_reference(layer, direction, layout):
    case = layer.case(seed=1)
    run, convert = runners.fastconv_runner(case.in_layout(layout), direction)
    ref_run, ref_convert = runners.fastconv_runner(case, direction, lib=fastconv.reference)
    assert runners.max_relative_error(convert(run()), ref_convert(ref_run())) < 1e-4


@pytest.mark.parametrize("layer", TINY, ids=lambda layer: layer.label)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_runner_matches_the_reference(layer, direction, channels_last):
    pytest.importorskip("torch")
    case = layer.case(seed=2)
    run, convert = runners.torch_runner(case, direction, channels_last)
    ref_run, ref_convert = runners.fastconv_runner(case, direction, lib=fastconv.reference)
    assert runners.max_relative_error(convert(run()), ref_convert(ref_run())) < 1e-4


@pytest.mark.parametrize("layer", TINY, ids=lambda layer: layer.label)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fastconv_torch_runner_matches_the_reference(layer, direction, layout):
    pytest.importorskip("torch")
    case = layer.case(seed=3)
    run, convert = runners.fastconv_torch_runner(case.in_layout(layout), direction)
    ref_run, ref_convert = runners.fastconv_runner(case, direction, lib=fastconv.reference)
    assert runners.max_relative_error(convert(run()), ref_convert(ref_run())) < 1e-4


def test_quick_run_writes_the_report(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from fastconv.bench import cpu

    cpu.main(
        [
            "--quick",
            "--filter",
            "global avgpool",
            "--batch",
            "2",
            "--seconds",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    text = (tmp_path / "cpu.md").read_text()
    assert "- Machine:" in text and "FMA peak" in text and "geometric mean" in text
    assert text.count("| global avgpool | 2x128x32x32 |") == 2
    assert "| fastconv.torch ms | route cost |" in text and "over direct fastconv" in text
    assert (tmp_path / "cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_layer_cases_cover_the_op_table():
    for layer in TINY:
        assert layer.case().op is ops.OPS[layer.op]
