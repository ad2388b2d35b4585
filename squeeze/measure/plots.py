"""The Pareto plots as PNGs: of the candidates table, validation accuracy (what the gate reads)
against shipped size and against latency, with the non-dominated front and the gate's limits;
and of the budget search's trials, accuracy on the search split against the same two, with the
budget's limits and the finalists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from squeeze.config.sections import GateParams

TEACHER_COLOR, PASS_COLOR, FAIL_COLOR = "tab:red", "tab:green", "tab:gray"
# label offsets in points, cycled along the front: neighbours on a front sit close in x, so
# alternating above/below keeps their names apart
OFFSETS = ((4, 6), (4, -11), (4, 14), (4, -19))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """The indices of the non-dominated points (smaller x, higher y is better), by ascending x.

    A point is dominated when another is no larger in x and no lower in y, and better in one.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:  # strictly more accurate than everything smaller or as small
            front.append(i)
            best = points[i][1]
    return front


def pareto_png(
    records: list[dict[str, Any]],
    path: Path,
    gate: GateParams,
    teacher: str,
    verdicts: dict[str, bool] | None = None,
) -> None:
    """Two panels, one point per model (validation accuracy with its 95% CI): the front is a
    step line and labelled, the gate's limits are dashed lines.

    Args:
        records: metrics/candidates.json's records (val_accuracy, val_accuracy_ci,
            shipped_bytes, latency_ms_p50).
        path: the PNG to write.
        gate: params.gate: min_accuracy, max_size_bytes and max_latency_ms are drawn.
        teacher: the reference model, drawn red and always labelled.
        verdicts: {name: passed} from the gate report (green pass, grey fail); None: all blue.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or workers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)
    panels = (
        (axes[0], "shipped_bytes", gate.max_size_bytes, "deployable file, shipped (xz) bytes"),
        (axes[1], "latency_ms_p50", gate.max_latency_ms, "batch-1 latency, median ms"),
    )
    for ax, key, limit, label in panels:
        draw_panel(ax, records, key, verdicts, teacher)
        ax.axhline(gate.min_accuracy * 100, color="tab:orange", ls="--", lw=1,
                   label=f"gate.min_accuracy {gate.min_accuracy:g}")  # fmt: skip
        bound = "max_size_bytes" if key == "shipped_bytes" else "max_latency_ms"
        ax.axvline(limit, color="tab:purple", ls="--", lw=1, label=f"gate.{bound} {limit:g}")
        set_log_x(ax)
        ax.set_xlabel(label + " (log)")
        ax.set_ylabel("validation accuracy, % (95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    colours = "red: teacher, green: passed the gate, grey: failed" if verdicts else "red: teacher"
    fig.suptitle(f"squeeze candidates on validation ({colours}; labelled: the front)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_panel(
    ax: Any,
    records: list[dict[str, Any]],
    key: str,
    verdicts: dict[str, bool] | None,
    teacher: str,
) -> None:
    """One panel: every model with its CI bar, the front as a step line, labels on the front."""
    for rec in records:
        acc, (low, high) = rec["val_accuracy"] * 100, rec["val_accuracy_ci"]
        ax.errorbar(rec[key], acc, yerr=[[acc - low * 100], [high * 100 - acc]], fmt="o",
                    color=colour(rec["name"], verdicts, teacher), capsize=2, ms=4,
                    alpha=0.9)  # fmt: skip
    points = [(float(rec[key]), float(rec["val_accuracy"]) * 100) for rec in records]
    front = pareto_front(points)
    xs, ys = zip(*(points[i] for i in front), strict=True)
    ax.plot(xs, ys, drawstyle="steps-post", color="black", lw=0.8, alpha=0.6,
            label="non-dominated front")  # fmt: skip
    labelled = front + [i for i, rec in enumerate(records) if rec["name"] == teacher]
    for n, i in enumerate(dict.fromkeys(labelled)):  # the teacher once, even on the front
        ax.annotate(records[i]["name"], points[i], fontsize=7, xytext=OFFSETS[n % len(OFFSETS)],
                    textcoords="offset points",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.7})  # fmt: skip


def colour(name: str, verdicts: dict[str, bool] | None, teacher: str) -> str:
    """The teacher red; a candidate green when it passed the gate, grey when not, else blue."""
    if name == teacher:
        return TEACHER_COLOR
    if verdicts is None or name not in verdicts:
        return "tab:blue"
    return PASS_COLOR if verdicts[name] else FAIL_COLOR


def set_log_x(ax: Any) -> None:
    """Log x with ticks at 1, 2, 5 × 10^k as plain numbers: within one decade matplotlib's
    default labels every minor tick in scientific notation, and the labels overlap."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def search_png(
    rows: list[dict[str, Any]], teacher: dict[str, float], floor: float,
    limits: dict[str, float | None], path: Path,
) -> None:  # fmt: skip
    """The budget search's trials, two panels (accuracy on the search split against shipped
    size and against batch-1 p50 latency): per-layer trials blue, uniform ones orange, a trial
    stopped before its fine-tune hollow, the finalists starred and named, the teacher red, the
    per-layer trials' non-dominated front a step line, the budget's limits dashed.

    Args:
        rows: search/trials.csv's rows (stages/search.py's TRIAL_COLUMNS; values as read, str).
        teacher: the teacher's search_accuracy, shipped_bytes and latency_ms_p50.
        floor: the lowest search accuracy within the budget (the teacher's less the drop).
        limits: {"shipped_bytes": max_shipped_bytes, "latency_ms_p50": max_latency_ms}, None
            where the budget sets none.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or workers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)
    labels = {"shipped_bytes": "shipped (xz) bytes", "latency_ms_p50": "batch-1 latency, median ms"}
    for ax, (key, label) in zip(axes, labels.items(), strict=True):
        for study, colour in (("per_layer", "tab:blue"), ("uniform", "tab:orange")):
            for early in (False, True):
                mine = [r for r in rows if r["study"] == study
                        and (r["stopped_early"] == "True") == early]  # fmt: skip
                if not mine:
                    continue
                name = f"{study} trials" + (", stopped early" if early else "")
                ax.scatter([float(r[key]) for r in mine],
                           [float(r["search_accuracy"]) * 100 for r in mine],
                           s=22, edgecolors=colour, facecolors="none" if early else colour,
                           label=name)  # fmt: skip
        # the front the finalists are chosen on: every trial's, uniform ones included
        points = [(float(r[key]), float(r["search_accuracy"]) * 100) for r in rows]
        if points:
            xs, ys = zip(*(points[i] for i in pareto_front(points)), strict=True)
            ax.plot(xs, ys, drawstyle="steps-post", color="black", lw=0.8, alpha=0.6,
                    label="front of all trials")  # fmt: skip
        for r in (r for r in rows if r["finalist"]):
            point = (float(r[key]), float(r["search_accuracy"]) * 100)
            ax.scatter(*point, marker="*", s=150, color="gold", edgecolors="black", zorder=3)
            ax.annotate(r["finalist"], point, fontsize=7, xytext=(5, 5), textcoords="offset points")
        ax.scatter(teacher[key], teacher["search_accuracy"] * 100, color=TEACHER_COLOR, s=40,
                   label="teacher", zorder=3)  # fmt: skip
        ax.axhline(floor * 100, color="tab:purple", ls="--", lw=1, label="accuracy floor")
        if limits[key] is not None:
            ax.axvline(
                limits[key], color="tab:purple", ls=":", lw=1, label=f"limit {limits[key]:g}"
            )
        set_log_x(ax)
        ax.set_xlabel(label + " (log)")
        ax.set_ylabel("accuracy on the search split, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("squeeze budget search: every trial (stars: the finalists built in full)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
