"""Champion vs challenger: whether a challenger that passed every gate replaces production."""

from __future__ import annotations

from typing import Any

from squeeze.config.sections import GateParams
from squeeze.decide.choose import ACCURACY, LATENCY, POLICY_METRIC
from squeeze.measure.stats import compare


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    table: list[list[int]] | None,
    cfg: GateParams,
    champion_failed: list[str] | None = None,
    identical: bool = False,
) -> dict[str, Any]:
    """Whether a challenger that passed every gate replaces the production champion.

    Both are measured in the same process on the same validation images; `table` is
    squeeze.measure.stats.paired_table(challenger correct, champion correct) on them. The rule:

    - nothing in production, or a champion that fails today's gates: the challenger wins;
    - smallest / fastest: the challenger wins when its shipped size is strictly lower / its p50
      latency strictly below the champion's × (1 - gate.latency_margin) (two medians differ by
      timing noise alone; bytes are exact), and its accuracy is non-inferior within
      gate.noninferiority_margin (the one-sided 1 - alpha paired bootstrap bound of challenger -
      champion >= -margin), or when it is significantly more accurate (McNemar exact p < alpha)
      and not larger / slower;
    - most_accurate: the challenger wins only when it is significantly more accurate.

    Returns:
        {"promote": bool, "outcome": "promoted" | "champion_kept" | "already_in_production",
        "reasons": [...], "comparison": the paired statistics that decided (or None)}.
    """

    def verdict(promote: bool, stats: dict | None, *reasons: str) -> dict[str, Any]:
        outcome = "promoted" if promote else "champion_kept"
        return {"promote": promote, "outcome": outcome, "reasons": list(reasons),
                "comparison": stats}  # fmt: skip

    if identical:
        return {
            "promote": False,
            "outcome": "already_in_production",
            "reasons": ["the challenger's model is byte-identical to production's"],
            "comparison": None,
        }
    if champion_failed:  # a damaged champion (not measurable) fails the `checksums` gate
        why = f"the champion fails today's gates: {', '.join(champion_failed)}"
        return verdict(True, None, why)
    if champion is None or table is None:
        return verdict(True, None, "nothing is in production yet")
    stats = compare(table, cfg.alpha, cfg.noninferiority_margin)
    accuracy = (
        f"validation accuracy {challenger[ACCURACY]} vs champion {champion[ACCURACY]}: "
        f"difference {stats['difference']:+.5f}, paired 95% CI {stats['ci95']}, one-sided "
        f"{1 - cfg.alpha:.0%} lower bound {stats['lower_bound']:+.5f}, McNemar exact "
        f"p = {stats['p_value']:.4g}"
    )
    metric = POLICY_METRIC[cfg.policy]
    if cfg.policy == "most_accurate":
        if stats["better"]:
            return verdict(True, stats, f"significantly more accurate (p < {cfg.alpha})", accuracy)
        return verdict(False, stats, f"not significantly more accurate (alpha {cfg.alpha})",
                       accuracy)  # fmt: skip
    ours, theirs = challenger[metric], champion[metric]
    bar, beaten = _bar(metric, theirs, cfg)
    wins = ours < bar
    if wins and stats["noninferior"]:
        why = (f"policy {cfg.policy!r}: {metric} {ours} < {beaten}, accuracy "
               f"non-inferior within margin {cfg.noninferiority_margin}")  # fmt: skip
        return verdict(True, stats, why, accuracy)
    if ours <= theirs and stats["better"]:
        why = (f"policy {cfg.policy!r}: {metric} {ours} <= champion's {theirs} and significantly "
               f"more accurate (p < {cfg.alpha})")  # fmt: skip
        return verdict(True, stats, why, accuracy)
    if wins:
        why = (f"policy {cfg.policy!r}: {metric} {ours} < {beaten}, but accuracy is "
               f"not non-inferior within margin {cfg.noninferiority_margin}")  # fmt: skip
    else:
        why = (f"policy {cfg.policy!r}: {metric} {ours} is not below {beaten} "
               "and the challenger is not significantly more accurate")  # fmt: skip
    return verdict(False, stats, why, accuracy)


def _bar(metric: str, theirs: float, cfg: GateParams) -> tuple[float, str]:
    """What the challenger's metric must be strictly below to win on it, and how to say so.

    Bytes are exact: any smaller file wins. A p50 latency is the median of a noisy timing, so a
    challenger must be at least gate.latency_margin (relative) faster than the champion.
    """
    if metric != LATENCY:
        return theirs, f"champion's {theirs}"
    bar = theirs * (1 - cfg.latency_margin)
    return bar, f"champion's {theirs} less the latency margin {cfg.latency_margin:.0%} ({bar:.4g})"
