"""Rows of the benchmark and their rendering: the markdown table, goal summaries, the PNG."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cases import GOAL_CATEGORIES, Case, bytes_moved, flops, goal
from .measure import Ceilings

# fastconv must agree with PyTorch to this relative error (of each output's largest value)
# for a row to count: a fast wrong kernel meets no goal. Winograd's float32 error fits in it.
MAX_RELATIVE_ERROR = 1e-3


@dataclass
class Row:
    """One case and pass: seconds per implementation and layout."""
    case: Case
    pass_: str
    fastconv: dict = field(default_factory=dict)  # "NCHW"/"NHWC" -> seconds
    torch: dict = field(default_factory=dict)     # "NCHW"/"channels_last" -> seconds
    error: float = 0.0  # fastconv vs PyTorch, worst over layouts and outputs

    @property
    def best(self) -> str:
        return min(self.fastconv, key=self.fastconv.get)

    @property
    def peer(self) -> str:
        return min(self.torch, key=self.torch.get)

    @property
    def ratio(self) -> float:
        return self.torch[self.peer] / self.fastconv[self.best]

    @property
    def goal(self):
        return goal(self.case, self.pass_)

    @property
    def met(self) -> bool:
        return self.ratio >= self.goal.minimum and self.error <= MAX_RELATIVE_ERROR

    def throughput(self, ceilings: Ceilings):
        """(value, unit, share of the ceiling) of fastconv's best layout; compute-bound rows in
        GFLOP/s against sgemm, memory-bound ones (below the roofline knee) in GB/s against copy."""
        work, traffic = flops(self.case, self.pass_), bytes_moved(self.case, self.pass_)
        seconds = self.fastconv[self.best]
        if work / traffic >= ceilings.balance:
            rate = work / seconds / 1e9
            return rate, "GFLOP/s", rate / ceilings.compute[0]
        rate = traffic / seconds / 1e9
        return rate, "GB/s", rate / ceilings.copy_gbs


@dataclass
class ReferenceRow:
    case: Case
    pass_: str
    reference: float  # seconds
    fastconv: float
    error: float      # fastconv vs the reference


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}" if seconds < 1e-2 else f"{seconds * 1e3:.1f}"


def _bold_if(text, flag):
    return f"**{text}**" if flag else text


def table(rows, ceilings: Ceilings) -> list:
    lines = ["| op | input (NCHW) | pass | fastconv NCHW ms | fastconv NHWC ms | torch NCHW ms "
             "| torch channels_last ms | peer / fastconv | fastconv achieved | of ceiling "
             "| goal | met | max rel err |",
             "|" + "---|" * 13]
    for r in rows:
        rate, unit, share = r.throughput(ceilings)
        times = [_bold_if(_ms(r.fastconv.get(k)), k == r.best) for k in ("NCHW", "NHWC")]
        times += [_bold_if(_ms(r.torch.get(k)), k == r.peer) for k in ("NCHW", "channels_last")]
        ceiling = ceilings.compute[1] if unit == "GFLOP/s" else "copy"
        lines.append(f"| {r.case.label} | {r.case.shape} | {r.pass_} | {' | '.join(times)} "
                     f"| {r.ratio:.2f}x | {rate:.1f} {unit} | {share:.0%} {ceiling} "
                     f"| {r.goal.minimum:g}x | {'yes' if r.met else 'NO'} | {r.error:.1e} |")
    return lines


def _ratio_list(rows) -> str:
    return "; ".join(f"{r.case.label} @{r.case.size} {r.pass_} {r.ratio:.2f}x"
                     + (" (wrong result)" if r.error > MAX_RELATIVE_ERROR else "") for r in rows)


def goal_summaries(rows) -> list:
    """One line per goal category of issue 3: met or not, then every row on either side."""
    lines = []
    for category in GOAL_CATEGORIES:
        members = [r for r in rows if r.goal.category == category]
        if not members:
            continue
        met = [r for r in members if r.met]
        missed = [r for r in members if not r.met]
        line = (f"{category}: {'met' if not missed else 'NOT met'}, {len(met)}/{len(members)} "
                f"rows")
        if met:
            line += f"; met: {_ratio_list(met)}"
        if missed:
            line += f"; below goal: {_ratio_list(missed)}"
        lines.append(line)
    return lines


def reference_table(rows) -> list:
    lines = ["| op | input (NCHW) | pass | reference ms | fastconv NCHW ms "
             "| reference / fastconv | max rel err |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r.case.label} | {r.case.shape} | {r.pass_} | {_ms(r.reference)} "
                     f"| {_ms(r.fastconv)} | {r.reference / r.fastconv:.1f}x | {r.error:.1e} |")
    return lines


def markdown(header: list, rows, reference_rows, ceilings: Ceilings) -> str:
    parts = ["# CPU benchmark: fastconv against PyTorch (oneDNN)", "", *header, "",
             "## Goals of issue 3", "", *[f"- {line}" for line in goal_summaries(rows)], "",
             "## Results", "",
             "Bold: the faster layout of each library. *peer / fastconv* is PyTorch's faster "
             "layout over fastconv's faster layout (above 1: fastconv is faster). FLOP are "
             "2 x the multiply-adds of direct convolution (backward = dx + dw = 2 x forward), "
             "so a Winograd kernel's GFLOP/s is an effective rate; bytes are the minimum "
             "float32 traffic. A row is compute-bound when its FLOP/byte exceeds the roofline "
             f"knee ({ceilings.balance:.1f} FLOP/byte). *max rel err*: fastconv against "
             f"PyTorch, relative to each output's largest value; above {MAX_RELATIVE_ERROR:g} "
             "a row counts as not met.", "", *table(rows, ceilings)]
    if reference_rows:
        parts += ["", "## The NumPy reference (fastconv.reference, float64 accumulation) on "
                  "small cases", "", *reference_table(reference_rows)]
    return "\n".join(parts) + "\n"


def bar_chart(rows, path: Path, title: str):
    """Bars from 1 to peer / fastconv per row on a log scale (right: fastconv faster), green
    where the row meets its goal, the goal marked on each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    ratios = [r.ratio for r in rows]
    ys = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.27 * len(rows)))
    ax.barh(ys, [ratio - 1 for ratio in ratios], left=1,
            color=["tab:green" if r.met else "tab:red" for r in rows])
    ax.scatter([r.goal.minimum for r in rows], ys, marker="|", s=200, color="black",
               label="goal", zorder=3)
    for y, ratio in zip(ys, ratios):
        ax.annotate(f"{ratio:.2f}x", (ratio, y), xytext=(3 if ratio >= 1 else -3, 0),
                    textcoords="offset points", va="center", fontsize=6,
                    ha="left" if ratio >= 1 else "right")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50)
             if min(ratios + [1]) / 2 <= t <= max(ratios + [5]) * 2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.set_xlim(min(ratios + [1]) / 1.5, max(ratios + [5]) * 1.5)
    ax.set_yticks(ys, [f"{r.case.label} @{r.case.size} {r.pass_}" for r in rows], fontsize=7)
    ax.set_xlabel("PyTorch ms / fastconv ms, faster layout of each (right of 1: fastconv "
                  "faster; green: goal met)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
