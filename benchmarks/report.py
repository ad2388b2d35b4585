"""Render the benchmark's results (one dict, also written as results.json) as Markdown.

Everything here formats; nothing measures or chooses. RESULTS.md and README's figures are
both rendered from the same results dict, so the three never disagree.
"""

from __future__ import annotations

import re
from typing import Any

from benchmarks.choose import REPORT

Results = dict[str, Any]
Row = dict[str, Any]
# hand-written notes (budgets measured by hand, findings): kept as they are when regenerating
NOTES_MARKER = "<!-- notes below are hand-written; benchmarks.compare keeps them as they are -->"
NOTES_FALLBACK = "## Budgets"  # where the notes began before the marker existed
README_SECTION = "## Figures"


def pct(value: float) -> str:
    return f"{value * 100:.2f}"


def with_ci(row: Row, split: str) -> str:
    """'92.66 [92.14, 93.15]': accuracy % with its Wilson 95% interval."""
    low, high = row[f"{split}_accuracy_ci"]
    return f"{pct(row[f'{split}_accuracy'])} [{pct(low)}, {pct(high)}]"


def speedup(row: Row) -> str:
    """'2.07× (1.95–2.10)': the speed-up of the median p50s, with the lowest and highest of the
    repeats' own speed-ups (benchmarks.compare.REPEATS)."""
    low, high = row["speedup_p50_range"]
    return f"{row['speedup_p50']:.2f}× ({low:.2f}–{high:.2f})"


def test_pts(row: Row, teacher: Row) -> str:
    """'-0.68': the row's test accuracy less the teacher's, in points."""
    return f"{(row['test_accuracy'] - teacher['test_accuracy']) * 100:+.2f}"


def by_name(results: Results) -> dict[str, Row]:
    return {r["name"]: r for r in results["models"]}


def models_table(results: Results) -> list[str]:
    """Every row measured: teacher, candidates, anchors, peers."""
    t = by_name(results)["teacher"]
    out = [
        "| model | method | val % [95% CI] | test % [95% CI] | Δ test pts | .onnx bytes "
        "| shipped bytes | teacher shipped ÷ shipped | teacher .onnx ÷ .onnx | nonzero params "
        "| MACs | p50 ms | p95 ms | speed-up p50 | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["models"]:
        out.append(
            f"| {r['name']} | {r['method']} | {with_ci(r, 'val')} | {with_ci(r, 'test')} | "
            f"{test_pts(r, t)} | {r['size_bytes']:,} | "
            f"{r['shipped_bytes']:,} | {r['shipped_ratio']:.1f}× | {r['onnx_ratio']:.1f}× | "
            f"{r['nonzero_params']:,} | {r['macs']:,} | {r['latency_ms_p50']:.4f} | "
            f"{r['latency_ms_p95']:.4f} | {speedup(r)} | {r['throughput']:,.0f} |"
        )
    return out


P_FLOOR = 1e-6  # p-values are stored to 6 decimals: a stored 0 is below this, not zero


def p_text(p: float) -> str:
    """A p-value as stored (6 decimals): 0 means below 1e-6, not zero."""
    return "< 1e-06" if p < P_FLOOR else f"{p:.3g}"


def holm(comparisons: list[dict[str, Any]]) -> list[float]:
    """Each comparison's McNemar p adjusted by Holm's step-down method (statsmodels
    `multipletests(method="holm")`), in the order given.

    The family is every paired comparison reported on the same split: a reader scans them
    together, and among that many tests one would come out p < 0.05 by chance alone; Holm keeps
    the chance of any false 'more accurate' in a family under alpha. A stored 0 counts as 1e-6,
    so its adjusted p is an upper bound (holm_text writes it "< ...").
    """
    from statsmodels.stats.multitest import multipletests

    adjusted = [1.0] * len(comparisons)
    for split in dict.fromkeys(c["split"] for c in comparisons):
        family = [i for i, c in enumerate(comparisons) if c["split"] == split]
        raw = [max(comparisons[i]["p_value"], P_FLOOR) for i in family]
        for i, q in zip(family, multipletests(raw, method="holm")[1], strict=True):
            adjusted[i] = float(q)
    return adjusted


def holm_text(q: float, c: dict[str, Any]) -> str:
    """A Holm-adjusted p beside its raw p; an upper bound ("< ...") where the raw p was."""
    return f"< {q:.3g}" if c["p_value"] < P_FLOOR else f"{q:.3g}"


def family_size(comparisons: list[dict[str, Any]], split: str) -> int:
    """How many comparisons Holm adjusts together on split (holm)."""
    return sum(c["split"] == split for c in comparisons)


def verdict(c: dict[str, Any], alpha: bool = True) -> str:
    """'kd_small more accurate (p < 0.05)' or 'no significant difference' (read from the raw p);
    alpha=False leaves the threshold out, as README's table does."""
    if not (c["better"] or c["worse"]):
        return "no significant difference"
    winner = c["a"] if c["better"] else c["b"]
    return f"{winner} more accurate" + (f" (p < {c['alpha']})" if alpha else "")


def comparisons_table(results: Results) -> list[str]:
    """Paired comparisons on the same images: McNemar exact p (raw, and Holm-adjusted over the
    comparisons on the same split), bootstrap CI of a − b."""
    rows = by_name(results)
    out = [
        "| method | a | b | split | a % [95% CI] | b % [95% CI] | a − b pts [95% CI] "
        "| McNemar p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, q in zip(results["comparisons"], holm(results["comparisons"]), strict=True):
        a, b, s = rows[c["a"]], rows[c["b"]], c["split"]
        low, high = c["ci95"]
        out.append(
            f"| {c['method']} | {c['a']} | {c['b']} | {s} | {with_ci(a, s)} | {with_ci(b, s)} | "
            f"{c['difference'] * 100:+.2f} [{low * 100:+.2f}, {high * 100:+.2f}] | "
            f"{p_text(c['p_value'])} | {holm_text(q, c)} | {verdict(c)} |"
        )
    return out


def peers_table(results: Results) -> list[str]:
    """Each peer against the squeeze candidate it stands in for: size and latency ratios."""
    out = [
        "| peer | built as | squeeze candidate (chosen on validation) "
        "| shipped bytes squeeze ÷ peer | .onnx bytes squeeze ÷ peer "
        "| p50 latency squeeze ÷ peer (lowest–highest of the repeats) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["models"]:
        if r["role"] != "peer":
            continue
        ratio = r["squeeze_over_peer"]
        low, high = ratio["latency_ms_p50_range"]
        out.append(
            f"| {r['name']} | {r['built']} | {r['compared_with']} | {ratio['shipped_bytes']:.2f} | "
            f"{ratio['size_bytes']:.2f} | {ratio['latency_ms_p50']:.2f} ({low:.2f}–{high:.2f}) |"
        )
    return out


def targets_table(results: Results) -> list[str]:
    """Each target's row chosen on validation, with that row's test figures."""
    rows = by_name(results)
    out = [
        "| target | on validation | chosen on validation | val % | test % [95% CI] "
        "| Δ test pts | teacher shipped ÷ shipped | teacher .onnx ÷ .onnx | speed-up p50 "
        "| teacher MACs ÷ MACs | holds on test |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t = rows["teacher"]
    for g in results["targets"]:
        if g["chosen"] is None:
            out.append(f"| {g['label']} | missed | — | — | — | — | — | — | — | — | — |")
            continue
        r = rows[g["chosen"]]
        out.append(
            f"| {g['label']} | met | {r['name']} | {pct(r['val_accuracy'])} | "
            f"{with_ci(r, REPORT)} | {test_pts(r, t)} | "
            f"{r['shipped_ratio']:.1f}× | {r['onnx_ratio']:.1f}× | {speedup(r)} | "
            f"{r['macs_ratio']:.2f}× | {'yes' if g['holds_on_test'] else 'no'} |"
        )
    return out


def noop_table(results: Results) -> list[str]:
    out = ["| run | wall time | stages | target |", "|---|---|---|---|"]
    return out + [f"| {n['run']} | {n['seconds']:.1f} s | {n['stages']} | {n['target']} |"
                  for n in results["noop"]]  # fmt: skip


TEACHER_TARGET = " Target: ≥ 93.0% in ≤ 12 minutes of training on 2 CPU cores."


def teacher_line(results: Results) -> str:
    t, train = by_name(results)["teacher"], results["teacher_training"]
    return (
        f"Validation {with_ci(t, 'val')} %, test {with_ci(t, 'test')} %; training "
        f"{train['train_seconds']:.0f} s over {train['epochs']} epoch(s) ({train['parameters']:,} "
        f"parameters, threads={train['threads']})."
        + (TEACHER_TARGET if results.get("profile", "default") == "default" else "")
    )


def header(results: Results, json_name: str) -> list[str]:
    ev = results["evaluate"]
    return [
        "# Benchmark results",
        "",
        f"Command: `{results['command']}` ({results.get('profile', 'default')} params). It "
        "regenerates this file and "
        f"`{json_name}` (the same figures, one record per model). "
        f"Machine: {results['machine']}. The models were built by commit {results['commit']}"
        f"{' with uncommitted changes' if results['dirty'] else ''}.",
        f"Measured {results['measured']}, all rows in one process, onnxruntime with "
        f"{ev['threads']} thread(s), batch-1 latency over {ev['runs']} runs after "
        f"{ev['warmup']} warm-up runs, in {ev['rounds']} interleaved rounds (each round times "
        "every row in turn, so a slow spell of the machine falls on all rows alike); the whole "
        f"timing is repeated {results['latency_repeats']} times (a number fixed before any was "
        "read). p50 and p95 are the medians over the repeats; a speed-up is the teacher's "
        "median p50 ÷ the row's, followed by the lowest and highest of the repeats' own "
        "speed-ups. A latency target is judged on that median.",
        "",
        "Every choice reads validation, every figure reported is test: the int8 candidate "
        "the quantization peers stand against and each target's row are the highest validation "
        "accuracy among those that qualify (qualifying accuracy conditions also read on "
        "validation); the test figures of "
        "that row are then reported, with whether the target still holds on test. Accuracies "
        "carry their Wilson 95% intervals; a difference is a claim only from a paired "
        "comparison on the same images (McNemar exact p, paired bootstrap 95% interval).",
        "",
        "Size: `.onnx bytes` is the ONNX file onnxruntime loads; `shipped bytes` is that file "
        "after xz -9e, the file the registry stores and ships (`model.onnx.xz`, "
        "squeeze/registry/package.py). Ratios compare like with like: the teacher's shipped file "
        "against the row's shipped file, and the teacher's .onnx against the row's .onnx.",
    ]


def peers_text(results: Results) -> list[str]:
    comparisons = results["comparisons"]
    splits = dict.fromkeys(c["split"] for c in comparisons)
    return [
        "## Peers",
        "",
        "What a user would pick instead, on the same teacher, data and machine, in the same "
        "process: PyTorch's `torch.nn.utils.prune.global_unstructured` (L1, one shot) at the "
        "sparsity of each of squeeze's unstructured candidates, with that candidate's fine-tuning "
        "budget (its fit params, plain loss); onnxruntime `quantize_dynamic` with default "
        "settings and OpenVINO NNCF `nncf.quantize` (default preset, the same number of "
        "calibration images) on the fp32 export that squeeze's best static int8 candidate "
        "quantizes. Ratios are squeeze ÷ peer (below 1: squeeze is smaller or faster).",
        "",
        *peers_table(results),
        "",
        "## What each method adds: paired comparisons",
        "",
        "a − b on the same images; a verdict other than 'no significant difference' needs "
        "McNemar's exact p < 0.05. distillation: a student distilled (from the teacher, or from "
        "an ensemble) against the same student, fit and seed trained on labels alone; ensemble: "
        "the logit ensemble against its member most accurate on validation; soup: the soup "
        "against what the merge stage built beside it from the same ingredients (the ingredient "
        "most accurate on validation, and the other soup); vs peer: squeeze's candidate against "
        "the peer built for it. Holm p: the McNemar p adjusted by Holm's method (statsmodels "
        "`multipletests`) over the family of comparisons on the same split ("
        + ", ".join(f"{family_size(comparisons, s)} on {s}" for s in splits)
        + "), read together: a verdict whose Holm p is not below 0.05 could be one of the false "
        "positives that many tests make likely. The verdicts read the raw p.",
        "",
        *comparisons_table(results),
    ]


def seconds_text(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 60:.1f} min"


def levers_text(levers: dict[str, Any] | None) -> str:
    """What the search timed of each lever on the teacher's export, and which it left out
    (squeeze.methods.search.speed_levers); "" where it timed none (size counts)."""
    if not levers:
        return ""
    space, p50 = levers["space"], levers["latency_ms_p50"]
    out = [w for w in p50 if w not in ("fp32", "zeroed") and w not in space["weights"]]
    if not space["max_unstructured"]:
        out.append("zeroed weights")
    return (" Only latency counts in this budget, so each lever was timed on the teacher's "
            "export first (p50: " + ", ".join(f"{k} {v:.3f} ms" for k, v in p50.items())
            + "); not searched, as no faster: " + (", ".join(out) or "none") + ".")  # fmt: skip


def search_section(results: Results) -> list[str]:
    """The budget search (results["search"], from benchmarks.compare.search_summary): the
    budget, the trials and their front on the search split, and each finalist built in full,
    measured on validation and test beside the teacher; [] when the run had no search."""
    found = results.get("search")
    if not found:
        return []
    b, rows, t = found["budget"], by_name(results), by_name(results)["teacher"]
    limits = ", ".join(f"{k} {b[k]}" for k in ("max_latency_ms", "max_shipped_bytes") if b[k])
    trials = found["trials"]
    counts = {study: [r for r in trials if r["study"] == study]
              for study in ("per_layer", "uniform")}  # fmt: skip
    challenger = (results.get("gate") or {}).get("challenger")
    out = [
        "## Search", "",
        f"Budget: objective `{b['objective']}` among the trials at most {b['max_accuracy_drop']:g} "
        f"({b['drop']}) below the teacher on the search split"
        + (f", {limits}" if limits else "") + f"; {b['trials']} per-layer and "
        f"{b['uniform_trials']} uniform trials (cap {b['hours']} h), seed {b['seed']}. The teacher "
        f"scored {pct(found['teacher']['search_accuracy'])}% on the search split. The search "
        f"(sensitivity pass and trials) took {seconds_text(found['search_seconds'])}; building "
        "the finalists in full took " + ", ".join(
            f"{n} {seconds_text(s)}" for n, s in found["build_seconds"].items()) + "."
        + levers_text(found.get("speed_levers")) + rescore_text(found),
        "",
        "Trials: " + "; ".join(
            f"{study} {len(r)} completed, {sum(x['within_budget'] == 'True' for x in r)} within "
            f"the budget, {sum(x['stopped_early'] == 'True' for x in r)} stopped before "
            "fine-tuning" for study, r in counts.items()) + ". The front on the search split, "
        "where the finalists are chosen (no other trial, of either study, is both as accurate "
        "and as "
        + ("fast" if b["objective"] == "fastest" else "small") + "):",
        "",
        "| trial | search % | rescored % | shipped bytes | p50 ms | weights | sparsity | qat "
        "| within budget | finalist |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['study']} {r['trial']} | {pct(float(r['search_accuracy']))} | "
          f"{rescored(r.get('rescored_accuracy'))} | {int(r['shipped_bytes']):,} | "
          f"{float(r['latency_ms_p50']):.4f} | {r['weights']} | {r['sparsity']} | {r['qat']} | "
          f"{r['within_budget']} | {r['finalist']} |" for r in trials
          if r["front"] == "True"),
        "",
        "Finalists, each built in full from its trial's recipe, measured above with every "
        "other row (the gate's challenger, chosen on validation, marked ★):",
        "",
        "| finalist | trial | weights | fp32 layers | sparsity | qat | search % (trial) "
        "| rescored % | val % [95% CI] | test % [95% CI] | Δ test pts "
        "| teacher shipped ÷ shipped | speed-up p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, recipe in found["finalists"].items():
        r = rows[name]
        out.append(
            f"| {name}{' ★' if name == challenger else ''} | {recipe['kind']} "
            f"{recipe['trial']}{student(recipe)} | {recipe['weights']} | "
            f"{len(recipe['fp32_layers'])} | {recipe['sparsity']:g} | {recipe['qat']} | "
            f"{pct(recipe['search_accuracy'])} | {rescored(recipe.get('rescored_accuracy'))} | "
            f"{with_ci(r, 'val')} | "
            f"{with_ci(r, 'test')} | {test_pts(r, t)} | "
            f"{r['shipped_ratio']:.1f}× | {speedup(r)} |"
        )
    return out + ["", "Per-layer against uniform: the `per-layer vs uniform` rows of the paired "
                  "comparisons above (McNemar exact p on the same images).",
                  *hand_tuned_text(results)]  # fmt: skip


def student(recipe: dict[str, Any]) -> str:
    """' (student ×W)' for a recipe that compresses a distilled student of width W, else "" (a
    teacher's, or one written before search.students)."""
    width = recipe.get("width", 1.0)
    return f" (student ×{width:g})" if width < 1 else ""


def rescored(accuracy: float | str | None) -> str:
    """A trial's second-rung accuracy on the search split, in %, or — if it was not rescored
    (a CSV cell "", a recipe's None, or a run from before rescoring)."""
    return pct(float(accuracy)) if accuracy not in (None, "") else "—"


def rescore_text(found: dict[str, Any]) -> str:
    """What the search's second rung did (squeeze.methods.search.rescore), or "" if nothing."""
    reference = found["teacher"].get("rescored_accuracy")
    if reference is None:
        return ""
    b = found["budget"]
    return (f" Up to {b['rescore']} trials past the accuracy floor were fine-tuned "
            f"again for {b['rescore_epochs']} epochs (`rescored %`; the uncompressed reference "
            f"{pct(reference)}% at that length), and each is judged within the budget by that "
            "score.")  # fmt: skip


def hand_tuned_text(results: Results) -> list[str]:
    """The hand-written graph's answer to the budget beside this run's (results["hand_tuned"], from
    benchmarks.compare.hand_tuned): [] without one. Another run, with a teacher of its own, so
    the two are not compared on paired predictions: each figure with its own interval."""
    other = results.get("hand_tuned")
    if not other:
        return []
    r = other["chosen"]
    return [
        "", f"Against the hand-written graph: in `{other['report']}` (the "
        f"{other.get('params', 'default')} params, commit "
        f"{other['commit'][:12]}, measured {other['measured']}), the candidate best under "
        f"`{other['policy']}` among those within {other['max_drop'] * 100:g} points of its teacher "
        f"on validation is `{r['name']}`: test {with_ci(r, 'test')} %, "
        f"{test_pts(r, other['teacher'])} points against its teacher, "
        f"{r['shipped_ratio']:.1f}× smaller shipped file, {speedup(r)} batch-1 speed-up. That "
        "run's teacher trained on all of train (no search split), so the two runs' models are "
        "compared by their ratios to their own teacher and by their intervals, not by a paired "
        "test.",
    ]  # fmt: skip


ANCHORS = (
    "Anchors (literal, from the original sketch): `anchor_random_mask50` zeroes a random half "
    "of every weight tensor; `anchor_minmax_int_no_zero_point` rounds w / ((max - min) / 255) "
    "to integers with no zero-point (stored back as floats, so its file is fp32-sized). Anchors "
    "in the literature: Deep Compression (Han et al. 2016) 39–40× on MNIST LeNets with no loss; "
    "Hinton et al. 2015 (distillation)."
)


def results_md(
    results: Results, notes: str = "", json_name: str = "benchmarks/results.json"
) -> str:
    """The whole of RESULTS.md; `notes` (hand-written, from kept_notes) goes at the end and
    json_name is the machine-readable file written beside it."""
    lines = [
        *header(results, json_name), "", *models_table(results), "", "## Targets", "",
        *targets_table(results), "", *peers_text(results), "", "## Teacher", "",
        teacher_line(results),
    ]  # fmt: skip
    if results.get("search"):
        lines += ["", *search_section(results)]
    if results.get("noop"):
        lines += ["", "## Nothing changed", "", *noop_table(results)]
    lines += ["", ANCHORS]
    text = "\n".join(lines) + "\n"
    return text + ("\n" + notes.rstrip("\n") + "\n" if notes else "")


NOTES_COMMIT = re.compile(r"<!-- notes checked against the results of commit ([0-9a-f]{40}) -->")


def notes_commit(text: str) -> str | None:
    """The commit whose results a RESULTS file's hand-written notes were last checked against
    (its NOTES_COMMIT line), or None when they carry none. A test fails when it is not the
    commit of the figures above them, so regenerated figures cannot leave stale notes behind."""
    found = NOTES_COMMIT.search(text.partition(NOTES_MARKER)[2])
    return found.group(1) if found else None


def kept_notes(previous: str) -> str:
    """The hand-written tail of a previous RESULTS.md (from NOTES_MARKER, or from the old
    first hand-written heading), marker included; '' when there is none."""
    for start in (NOTES_MARKER, NOTES_FALLBACK):
        if start in previous:
            tail = previous[previous.index(start) :]
            return tail if start == NOTES_MARKER else f"{NOTES_MARKER}\n\n{tail}"
    return ""


# README's figures: the targets its table shows, by key (choose.TARGETS), with short labels
README_TARGETS = {
    "accurate_small": "≥ 92.5% with a shipped file ≤ 64 KB",
    "latency_5x": "≥ 5× lower batch-1 latency, ≤ 0.5 pt drop",
}
# each peer (its row's method, benchmarks/compare.py) as README's table names it
PEER_NAMES = {
    "torch.nn.utils.prune": "PyTorch pruning",
    "onnxruntime quantize_dynamic": "onnxruntime",
    "nncf.quantize": "NNCF int8",
}


def equals(p: str) -> str:
    """'= 0.12' or '< 1e-06': a formatted p-value after its name."""
    return p if p.startswith("<") else f"= {p}"


def p_pair(c: dict[str, Any], q: float) -> str:
    """'McNemar p = 0.00388, Holm p = 0.031': the raw p and its Holm-adjusted p (holm)."""
    return f"McNemar p {equals(p_text(c['p_value']))}, Holm p {equals(holm_text(q, c))}"


def points(c: dict[str, Any]) -> str:
    """'+1.16 points [+0.70, +1.60]': a − b with its bootstrap 95% interval."""
    low, high = c["ci95"]
    return f"{c['difference'] * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}]"


def readme_intro(results: Results) -> list[str]:
    """The paragraph above README's table: the machine, how rows were chosen, where the rest is."""
    return [
        f"Measured on {results['machine']} with the",
        f"{results.get('profile', 'default')} params; every row chosen on validation, test "
        "accuracy reported with its 95% interval.",
        "The full table, the targets, peers, paired comparisons and anchors are in",
        "[`benchmarks/RESULTS.md`](benchmarks/RESULTS.md), regenerated by",
        f"`{results['command']}`",
        "(machine-readable: `benchmarks/results.json`).",
    ]


def model_rows(results: Results) -> list[str]:
    """Table rows: the teacher, the gate's challenger and README_TARGETS' chosen rows."""
    rows = by_name(results)
    t = rows["teacher"]
    out = [
        f"| teacher, after {results['teacher_training']['train_seconds']:.0f} s of training | "
        f"{with_ci(t, REPORT)} %, {t['shipped_bytes']:,} B shipped |"
    ]
    if gate := results.get("gate"):
        r = rows[gate["challenger"]]
        out.append(
            f"| the gate's challenger (policy {gate['policy']}): `{r['name']}` | "
            f"{with_ci(r, REPORT)} %, {r['shipped_bytes']:,} B shipped "
            f"({r['shipped_ratio']:.1f}× smaller than the teacher's) |"
        )
    targets = {g["target"]: g for g in results["targets"]}
    for key, label in README_TARGETS.items():
        g = targets[key]
        if g["chosen"] is None:
            out.append(f"| {label} | missed |")
            continue
        r = rows[g["chosen"]]
        out.append(
            f"| {label}: `{r['name']}` | {with_ci(r, REPORT)} %, {r['shipped_bytes']:,} B shipped "
            f"({r['shipped_ratio']:.1f}× smaller), {speedup(r)} lower p50 latency"
            f"{'' if g['holds_on_test'] else ' (does not hold on test)'} |"
        )
    return out


def on_report_split(results: Results) -> list[tuple[dict[str, Any], float]]:
    """The paired comparisons on test, each with its Holm-adjusted p (holm)."""
    comparisons = results["comparisons"]
    pairs = zip(comparisons, holm(comparisons), strict=True)
    return [(c, q) for c, q in pairs if c["split"] == REPORT]


def distillation_row(results: Results) -> list[str]:
    """The first distillation comparison on test as a table row ([] when there is none)."""
    distillation = [(c, q) for c, q in on_report_split(results) if c["method"] == "distillation"]
    if not distillation:
        return []
    c, q = distillation[0]
    return [
        f"| distillation: `{c['a']}` vs `{c['b']}` (same student, labels alone) | "
        f"{points(c)}, {p_pair(c, q)}: {verdict(c, alpha=False)} |"
    ]


def peers_row(results: Results) -> list[str]:
    """Every comparison on test against a peer as one table row: how many, how many show no
    significant difference, and each one that does spelled out ([] when there are none)."""
    rows = by_name(results)
    vs_peer = [(c, q) for c, q in on_report_split(results) if c["method"] == "vs peer"]
    if not vs_peer:
        return []

    def peer(c: dict[str, Any]) -> str:
        method = rows[c["b"]]["method"]
        return PEER_NAMES.get(method, method)

    *others, last = dict.fromkeys(peer(c) for c, _ in vs_peer)  # each peer once, in order
    named = f"{', '.join(others)} and {last}" if others else last
    found = [f"`{c['a']}` {points(c)} {'over' if c['better'] else 'against'} {peer(c)} "
             f"({p_pair(c, q)})" for c, q in vs_peer if c["better"] or c["worse"]]  # fmt: skip
    cell = "; ".join([f"{len(vs_peer) - len(found)} no significant difference", *found])
    count = f"{len(vs_peer)} paired comparison{'s' * (len(vs_peer) > 1)}"
    return [f"| vs peers ({named}): {count} | {cell} |"]


def readme_figures(results: Results) -> str:
    """The body of README's Figures section: a paragraph and a `| figure | on test |` table of
    headline rows, every one chosen on validation and reported on test."""
    table = ["| figure | on test |", "| --- | --- |", *model_rows(results),
             *distillation_row(results), *peers_row(results)]  # fmt: skip
    return "\n".join([*readme_intro(results), "", *table]) + "\n"


METHODS_SECTION = "## What each method buys"


def network(results: Results) -> str:
    """The teacher's network as its params name it: 'examples.user_models.ResNet' or
    'the built-in convnet'."""
    arch = results["network"]
    return f"`{arch['class_path']}`" if "class_path" in arch else f"the built-in {arch['name']}"


def methods_rows(results: Results) -> list[str]:
    """One row per compression method of one benchmark: the candidate benchmarks.choose.by_method
    chose for it on validation, with that row's test drop, size and speed-up."""
    rows = by_name(results)
    t = rows["teacher"]
    out = []
    for method, name in results["by_method"].items():
        r = rows[name]
        out.append(
            f"| {network(results)} ({results['profile']} params) | {method} | `{r['name']}` | "
            f"{test_pts(r, t)} | "
            f"{r['shipped_ratio']:.1f}× | {speedup(r)} |"
        )
    return out


def methods_by_network(all_results: list[Results]) -> str:
    """The body of README's 'What each method buys' section: for every committed benchmark
    (benchmarks/results*.json), each method's candidate chosen on validation and its test
    figures against that run's teacher."""
    return "\n".join([
        "Each method's candidate most accurate on validation, per network, from the committed",
        "benchmarks (`benchmarks/results*.json`, each regenerated by the command in its",
        "RESULTS file; this section by `benchmarks.compare --readme README.md`). Δ is test points",
        "against that network's teacher; a speed-up below 1× is slower than the fp32 teacher;",
        "the brackets hold the lowest and highest of the repeated timings.",
        "",
        "| network | method | candidate | Δ test pts | teacher shipped ÷ shipped | speed-up p50 |",
        "| --- | --- | --- | --- | --- | --- |",
        *(row for results in all_results for row in methods_rows(results)),
    ]) + "\n"  # fmt: skip


def replace_section(text: str, heading: str, body: str) -> str:
    """text with the body of the `heading` section (up to the next '## ') replaced by body.

    Raises:
        ValueError: text has no line equal to heading (say which file to fix).
    """
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == heading]
    if not starts:
        raise ValueError(f"no '{heading}' section to replace; add that heading first")
    start = starts[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join([*lines[:start], "\n", body, "\n", *lines[end:]])
