"""Champion vs challenger: whether a challenger that passed every gate replaces production."""

from __future__ import annotations

from typing import Any

from squeeze.config.sections import GateParams
from squeeze.decide.choose import ACCURACY, POLICY_METRIC
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
    - smallest / fastest: the challenger wins when its shipped size / p50 latency is strictly
      lower and its accuracy is non-inferior within gate.noninferiority_margin (the one-sided
      1 - alpha paired bootstrap bound of challenger - champion >= -margin), or when it is
      significantly more accurate (McNemar exact p < alpha) and not larger / slower;
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
    if ours < theirs and stats["noninferior"]:
        why = (f"policy {cfg.policy!r}: {metric} {ours} < champion's {theirs}, accuracy "
               f"non-inferior within margin {cfg.noninferiority_margin}")  # fmt: skip
        return verdict(True, stats, why, accuracy)
    if ours <= theirs and stats["better"]:
        why = (f"policy {cfg.policy!r}: {metric} {ours} <= champion's {theirs} and significantly "
               f"more accurate (p < {cfg.alpha})")  # fmt: skip
        return verdict(True, stats, why, accuracy)
    if ours < theirs:
        why = (f"policy {cfg.policy!r}: {metric} {ours} < champion's {theirs}, but accuracy is "
               f"not non-inferior within margin {cfg.noninferiority_margin}")  # fmt: skip
    else:
        why = (f"policy {cfg.policy!r}: {metric} {ours} is not below the champion's {theirs} "
               "and the challenger is not significantly more accurate")  # fmt: skip
    return verdict(False, stats, why, accuracy)
