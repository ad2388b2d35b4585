"""The Pareto plots of the candidates table (accuracy vs size, accuracy vs latency) as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_png(records: list[dict[str, Any]], path: Path) -> None:
    """Two scatter panels, one point per model, labelled; the teacher is the reference."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or workers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    for ax, key, label in (
        (axes[0], "shipped_bytes", "deployable file, shipped (xz) bytes (log)"),
        (axes[1], "latency_ms_p50", "batch-1 latency, median ms (log)"),
    ):
        for rec in records:
            color = "tab:red" if rec["name"] == "teacher" else "tab:blue"
            acc, (low, high) = rec["test_accuracy"] * 100, rec["test_accuracy_ci"]
            # the bar is the Wilson 95% interval of the test accuracy
            ax.errorbar(rec[key], acc, yerr=[[acc - low * 100], [high * 100 - acc]], fmt="o",
                        color=color, capsize=2)  # fmt: skip
            ax.annotate(rec["name"], (rec[key], acc), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        # ticks at 1, 2, 5 × 10^k as plain numbers: within one decade matplotlib's default
        # labels every minor tick in scientific notation, and the labels overlap
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy, % (95% CI)")
        ax.grid(alpha=0.3)
    fig.suptitle("squeeze candidates (red: teacher)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
