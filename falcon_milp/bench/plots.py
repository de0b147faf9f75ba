"""Benchmark plots (matplotlib, Agg backend, PNG): gap per solver and family, time vs size.

matplotlib is imported inside the functions, so importing the bench package stays cheap.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .report import Row, family_names, solvers_in

GAP_FLOOR = 1e-12
"""Gaps below this (0 included) are drawn at this height on the log axis."""
OWN_GAP_CEIL = 100.0
"""Own gaps above this (an empty mask has gap bound / 1e-12) are drawn at this height."""

_MARKERS = "osD^vP*Xh<>p"


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt



def _save(plt, fig, ax, path: str | Path) -> Path:
    """Legend outside the axes, tight layout, write the PNG and free the figure."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def plot_gap_by_family(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Grouped bars: largest gap to best known per (family, solver); dots: each instance."""
    rows = [r for r in rows if r.gap_to_best is not None]
    if not rows:
        return None
    plt = _plt()
    families, solvers = family_names(rows), solvers_in(rows)
    width = 0.8 / max(1, len(solvers))
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.16 * len(families) * max(1, len(solvers)) + 3.0)), 5.2))
    cmap = plt.get_cmap("tab10")
    for j, s in enumerate(solvers):
        xs, tops = [], []
        for i, fam in enumerate(families):
            vals = [max(r.gap_to_best, GAP_FLOOR) for r in rows if r.family == fam and r.solver == s]
            if not vals:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            tops.append(max(vals))
            ax.scatter([x] * len(vals), vals, s=6, color="black", zorder=3, linewidths=0)
        if xs:
            ax.bar(xs, [t - GAP_FLOOR for t in tops], width=width * 0.95, bottom=GAP_FLOOR,
                   color=cmap(j % 10), label=s, zorder=2)
    ax.set_yscale("log")
    ax.set_ylim(GAP_FLOOR / 2, None)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(families, rotation=25, ha="right", fontsize=8)
    for i in range(1, len(families)):
        ax.axvline(i - 0.5, color="0.85", linewidth=0.8, zorder=1)
    ax.set_xlim(-0.5, len(families) - 0.5)
    ax.set_ylabel("gap to best known (log; 0 drawn at 1e-12)")
    ax.set_title("Largest gap to best known per family (bars) and per instance (dots)")
    ax.grid(axis="y", which="major", alpha=0.3, zorder=0)
    return _save(plt, fig, ax, path)


def plot_time_vs_size(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Log-log: runtime (median over repeats) against the number of weights, one series per solver."""
    rows = [r for r in rows if r.runtime_s is not None and r.n_weights]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    cmap = plt.get_cmap("tab10")
    for j, s in enumerate(solvers_in(rows)):
        pts = sorted((r.n_weights, max(r.runtime_s, 1e-5), r.termination == "time_limit")
                     for r in rows if r.solver == s)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, marker=_MARKERS[j % len(_MARKERS)], s=16, alpha=0.8,
                   color=cmap(j % 10), label=s, linewidths=0)
        lim = [(p[0], p[1]) for p in pts if p[2]]
        if lim:
            ax.scatter(*zip(*lim), s=60, facecolors="none", edgecolors=cmap(j % 10), zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of weights p")
    ax.set_ylabel("solve time (s, median over repeats)")
    ax.set_title("Time vs size, one point per instance (circled: stopped at the time limit)")
    ax.grid(which="major", alpha=0.3)
    return _save(plt, fig, ax, path)


def plot_own_gap_vs_size(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Log-log: each solver's own certified gap against the number of weights."""
    rows = [r for r in rows if r.gap is not None and r.n_weights and math.isfinite(r.gap)
            and r.status in ("feasible", "optimal")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    cmap = plt.get_cmap("tab10")
    for j, s in enumerate(solvers_in(rows)):
        pts = sorted((r.n_weights, min(max(r.gap, GAP_FLOOR), OWN_GAP_CEIL)) for r in rows if r.solver == s)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[j % len(_MARKERS)],
                   s=16, color=cmap(j % 10), label=s, alpha=0.8, linewidths=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(GAP_FLOOR / 2, OWN_GAP_CEIL * 3)
    ax.set_xlabel("number of weights p")
    ax.set_ylabel(f"own certified gap (log; 0 at 1e-12, >= {OWN_GAP_CEIL:g} at {OWN_GAP_CEIL:g})")
    ax.set_title("Certified gap each solver proves about its own answer")
    ax.grid(which="major", alpha=0.3)
    return _save(plt, fig, ax, path)


PLOTS = (
    ("gap_by_family.png", plot_gap_by_family,
     "Gap to best known per solver and instance family (bars: largest; dots: each instance)"),
    ("time_vs_size.png", plot_time_vs_size, "Solve time against the number of weights (log-log)"),
    ("own_gap_vs_size.png", plot_own_gap_vs_size,
     "Each solver's own certified gap against the number of weights (log-log)"),
)


def write_plots(rows: Sequence[Row], out_dir: str | Path) -> list[tuple[str, str]]:
    """Write every plot that has data; returns (file name, caption) pairs for the report."""
    out = []
    for fname, func, caption in PLOTS:
        if func(rows, Path(out_dir) / fname) is not None:
            out.append((fname, caption))
    return out
