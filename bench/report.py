"""Rows of the CPU benchmark and their rendering: the markdown table, the goal summary, the PNG."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .cases import EFFICIENCY_GOAL, GEOMETRIC_MEAN_GOAL, SHORT, Layer, minimum_ratio
from .measure import Ceilings

# fastconv must agree with PyTorch to this relative error (of each output's largest value)
# for a row to count: a fast wrong kernel meets no goal. Winograd's float32 error fits in it.
MAX_RELATIVE_ERROR = 1e-3
# What the operator route (fastconv.torch, from PyTorch tensors) may cost over calling
# fastconv directly, per call.
MAX_ROUTE_COST = 0.05
# The column of the --baseline build, and how much slower than it a row may time before the
# summary names it (the noise of one interleaved run on a shared machine).
BASELINE = "base"
BASELINE_SLACK = 0.05


@dataclass
class Row:
    """One layer and direction: seconds of each contender in each layout."""

    layer: Layer
    direction: str
    fastconv: dict = field(default_factory=dict)  # ISA -> {"NCHW"/"NHWC": seconds}
    torch: dict = field(default_factory=dict)  # "NCHW"/"channels_last" -> seconds
    fastconv_torch: dict = field(default_factory=dict)  # first ISA via fastconv.torch: layout -> s
    route_ratio: dict = field(default_factory=dict)  # layout -> median fastconv.torch / fastconv
    flops: int = 0
    bytes: int = 0
    algorithms: dict = field(default_factory=dict)  # layout -> the selector's choice, first ISA
    error: float = 0.0  # fastconv vs PyTorch, worst over ISAs, layouts and outputs

    @property
    def isa(self) -> str:
        """The ISA of the first fastconv column: the one this run is about."""
        return next(iter(self.fastconv))

    def best(self, isa=None) -> tuple:
        """(layout, seconds) of fastconv's faster layout with `isa`'s kernels."""
        times = self.fastconv[isa or self.isa]
        layout = min(times, key=times.get)
        return layout, times[layout]

    @property
    def peer(self) -> tuple:
        layout = min(self.torch, key=self.torch.get)
        return layout, self.torch[layout]

    def ratio(self, isa=None) -> float:
        """PyTorch's faster layout over fastconv's faster layout (> 1: fastconv faster)."""
        return self.peer[1] / self.best(isa)[1]

    @property
    def algorithm(self) -> str:
        """The convolution algorithm(s) of fastconv's faster layout ("" for other ops)."""
        return self.algorithms.get(self.best()[0], "")

    @property
    def winograd(self) -> bool:
        """A pass of this row runs Winograd: its GFLOP/s are effective, not performed."""
        return "winograd" in self.algorithm

    def route_cost(self) -> float | None:
        """fastconv.torch's time over direct fastconv's, minus 1, in fastconv's faster layout
        with the first ISA: what the operator route adds per call (None: not timed)."""
        if not self.route_ratio:
            return None
        return self.route_ratio[self.best()[0]] - 1

    @property
    def goal(self) -> float:
        return minimum_ratio(self.layer, self.direction)

    @property
    def met(self) -> bool:
        return self.ratio() >= self.goal and self.error <= MAX_RELATIVE_ERROR

    def throughput(self, ceilings: Ceilings):
        """(value, unit, share of the ceiling, ceiling name) of fastconv's faster layout:
        compute-bound rows in GFLOP/s against the ISA's FMA peak, memory-bound ones (below
        the roofline knee) in GB/s against the copy bandwidth."""
        seconds = self.best()[1]
        if self.flops / self.bytes >= ceilings.balance(self.isa):
            rate = self.flops / seconds / 1e9
            peak = ceilings.fma_gflops.get(self.isa, ceilings.sgemm_gflops)
            return rate, "GFLOP/s", rate / peak, f"{self.isa} FMA peak"
        rate = self.bytes / seconds / 1e9
        return rate, "GB/s", rate / ceilings.copy_gbs, "copy"

    def efficient(self, ceilings: Ceilings):
        """None where the efficiency goal does not apply (Winograd rows), else whether the
        row reaches EFFICIENCY_GOAL of its ceiling."""
        return None if self.winograd else self.throughput(ceilings)[2] >= EFFICIENCY_GOAL


@dataclass
class ReferenceRow:
    layer: Layer
    direction: str
    reference: float  # seconds
    fastconv: float
    error: float  # fastconv vs the reference


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g}" if seconds < 1e-2 else f"{seconds * 1e3:.1f}"


def _name(row) -> str:
    return f"{row.layer.label} @{row.layer.size} {SHORT[row.direction]}"


def columns(rows) -> list:
    """The fastconv builds timed, in the order of the first row that has each (the
    baseline build skips rows it cannot run)."""
    return list(dict.fromkeys(isa for r in rows for isa in r.fastconv))


def summary(rows, ceilings: Ceilings) -> list:
    """The goals, one line each: met or not, and the rows that miss."""
    lines = []
    for isa in columns(rows):
        ratios = [r.ratio(isa) for r in rows if isa in r.fastconv]
        lines.append(
            f"fastconv {isa}: geometric mean of PyTorch / fastconv over {len(ratios)} "
            f"rows {geometric_mean(ratios):.2f}x"
            + ("" if isa == BASELINE else f" (goal {GEOMETRIC_MEAN_GOAL:g}x)")
            + f"; slowest {min(ratios):.2f}x"
        )
    lines += _against_baseline(rows)
    behind = [r for r in rows if not r.met]
    misses = [
        f"{_name(r)} {r.ratio():.2f}x (goal {r.goal:g}x)"
        + (" WRONG RESULT" if r.error > MAX_RELATIVE_ERROR else "")
        for r in behind
    ]
    lines.append(
        f"rows at or above their goal (1.0x; 3x3 stride 1: 1.8x fwd, 1.3x bwd): "
        f"{len(rows) - len(behind)}/{len(rows)}"
        + (f"; below: {'; '.join(misses)}" if behind else "")
    )
    routed = [r for r in rows if r.route_cost() is not None]
    if routed:
        costs = [r.route_cost() for r in routed]
        over = [r for r in routed if r.route_cost() > MAX_ROUTE_COST]
        total = sum(r.best()[1] * r.route_cost() for r in routed) / sum(r.best()[1] for r in routed)
        lines.append(
            f"fastconv.torch (the custom operators from PyTorch tensors) over direct "
            f"fastconv: {total:+.1%} over all {len(routed)} rows together; per call "
            f"median {statistics.median(costs):+.1%}, largest {max(costs):+.1%}; rows "
            f"above {MAX_ROUTE_COST:+.0%}: {len(over)}/{len(routed)}"
            + (f" ({'; '.join(f'{_name(r)} {r.route_cost():+.1%}' for r in over)})" if over else "")
        )
    graded = [r for r in rows if r.efficient(ceilings) is not None]
    short = [r for r in graded if not r.efficient(ceilings)]
    lines.append(
        f"rows at >= {EFFICIENCY_GOAL:.0%} of their ceiling (FMA peak or copy; Winograd "
        f"rows excluded): {len(graded) - len(short)}/{len(graded)}"
        + (
            f"; below: {'; '.join(f'{_name(r)} {r.throughput(ceilings)[2]:.0%}' for r in short)}"
            if short
            else ""
        )
    )
    return lines


def _against_baseline(rows) -> list:
    """Per ISA, the rows it runs slower than the baseline build ('base') by more than
    BASELINE_SLACK, in each contender's faster layout."""
    compared = [r for r in rows if BASELINE in r.fastconv]
    if not compared:
        return []
    lines = []
    for isa in [i for i in columns(rows) if i != BASELINE]:
        ratios = [(_name(r), r.best(BASELINE)[1] / r.best(isa)[1]) for r in compared]
        slower = [(name, ratio) for name, ratio in ratios if ratio < 1 - BASELINE_SLACK]
        lines.append(
            f"fastconv {isa} against the baseline build: geometric mean of base / {isa} over "
            f"{len(ratios)} rows {geometric_mean(v for _, v in ratios):.2f}x; rows more than "
            f"{BASELINE_SLACK:.0%} slower than base: {len(slower)}/{len(ratios)}"
            + (f" ({'; '.join(f'{n} {v:.2f}x' for n, v in slower)})" if slower else "")
        )
    return lines


def table(rows, ceilings: Ceilings) -> list:
    isas = columns(rows)
    routed = any(r.fastconv_torch for r in rows)
    head = (
        ["op", "input (NCHW)", "pass"]
        + [f"fastconv {isa} ms" for isa in isas]
        + (["fastconv.torch ms", "route cost"] if routed else [])
        + ["torch ms", f"torch / {isas[0] if isas else ''}"]
        + [f"torch / {isa}" for isa in isas[1:]]
        + ["fastconv achieved", "of ceiling", "algorithm", "goal", "met", "max rel err"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rate, unit, share, ceiling = r.throughput(ceilings)
        cells = [
            f"{_ms(r.best(isa)[1])} {r.best(isa)[0]}" if isa in r.fastconv else "-" for isa in isas
        ]
        if routed:
            layout = r.best()[0]
            cells += [
                f"{_ms(r.fastconv_torch.get(layout))} {layout}",
                "-" if r.route_cost() is None else f"{r.route_cost():+.1%}",
            ]
        cells.append(f"{_ms(r.peer[1])} {r.peer[0]}")
        cells += [f"{r.ratio(isa):.2f}x" if isa in r.fastconv else "-" for isa in isas]
        cells += [
            f"{rate:.1f} {unit}",
            f"{share:.0%} {ceiling}",
            r.algorithm or "-",
            f"{r.goal:g}x",
            "yes" if r.met else "NO",
            f"{r.error:.1e}",
        ]
        lines.append(
            f"| {r.layer.label} | {r.layer.shape} | {SHORT[r.direction]} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def reference_table(rows) -> list:
    lines = [
        "| op | input (NCHW) | pass | reference ms | fastconv ms "
        "| reference / fastconv | max rel err |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        lines.append(
            f"| {r.layer.label} | {r.layer.shape} | {SHORT[r.direction]} "
            f"| {_ms(r.reference)} | {_ms(r.fastconv)} | {r.reference / r.fastconv:.1f}x "
            f"| {r.error:.1e} |"
        )
    return lines


def markdown(header: list, rows, reference_rows, ceilings: Ceilings) -> str:
    parts = [
        "# CPU benchmark: fastconv against PyTorch (oneDNN)",
        "",
        *header,
        "",
        "## Goals",
        "",
        *[f"- {line}" for line in summary(rows, ceilings)],
        "",
        "## Results",
        "",
        "Each time is the faster layout of that contender (the layout is named beside it). "
        "*torch / ISA* is PyTorch's faster time over fastconv's faster time with that ISA's "
        "kernels (above 1: fastconv is faster); goals apply to the first ISA column. FLOP "
        "are 2 x the multiply-adds of direct convolution (backward = 2 x forward), so a "
        "Winograd row's GFLOP/s is an effective rate; bytes are the minimum float32 "
        "traffic. A row is compute-bound when its FLOP/byte exceeds the roofline knee "
        "(FMA peak / copy bandwidth). *fastconv.torch*: the first ISA's kernels called "
        "through the custom operators from PyTorch tensors (channels_last for NHWC), "
        "timed as PyTorch is (forward under no_grad, backward by torch.autograd.grad), in "
        "fastconv's faster layout; *route cost*: its time over direct fastconv's (the median "
        "of the ratios of the two in each round, so load between rounds cancels). *max rel "
        "err*: every fastconv route against PyTorch, relative to each output's largest "
        f"value; above {MAX_RELATIVE_ERROR:g} a row counts as not met.",
        "",
        *table(rows, ceilings),
    ]
    if reference_rows:
        parts += [
            "",
            "## The NumPy reference (fastconv.reference, float64 accumulation) on small cases",
            "",
            *reference_table(reference_rows),
        ]
    return "\n".join(parts) + "\n"


def bar_chart(rows, path: Path, title: str):
    """Bars from 1 to PyTorch / fastconv per row on a log scale (right: fastconv faster),
    green where the row meets its goal, the goal marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    ratios = [r.ratio() for r in rows]
    ys = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.27 * len(rows)))
    ax.barh(
        ys,
        [ratio - 1 for ratio in ratios],
        left=1,
        color=["tab:green" if r.met else "tab:red" for r in rows],
    )
    ax.scatter([r.goal for r in rows], ys, marker="|", s=200, color="black", label="goal", zorder=3)
    for y, ratio in zip(ys, ratios):
        ax.annotate(
            f"{ratio:.2f}x",
            (ratio, y),
            xytext=(3 if ratio >= 1 else -3, 0),
            textcoords="offset points",
            va="center",
            fontsize=6,
            ha="left" if ratio >= 1 else "right",
        )
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [
        t
        for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50)
        if min(ratios + [1]) / 2 <= t <= max(ratios + [5]) * 2
    ]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.set_xlim(min(ratios + [1]) / 1.5, max(ratios + [5]) * 1.5)
    ax.set_yticks(ys, [_name(r) for r in rows], fontsize=7)
    ax.set_xlabel(
        "PyTorch ms / fastconv ms, faster layout of each (right of 1: fastconv "
        "faster; green: goal met)"
    )
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
