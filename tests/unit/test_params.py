"""params.yaml validation: every bad value fails before any work, naming the dotted key."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from squeeze.config.errors import ParamsError
from squeeze.config.files import (
    apply_profile,
    dump,
    load_params,
    merge,
    read_yaml,
    replace,
    write_params,
)
from squeeze.config.params import Params, validate

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw() -> dict:
    """params.yaml with the ensembles profile: a candidate of every kind."""
    ensembles = read_yaml(PROJECT / "profiles" / "ensembles.yaml")
    return merge(read_yaml(PROJECT / "params.yaml"), ensembles)


def error_of(data: dict) -> str:
    with pytest.raises(ParamsError) as err:
        validate(data, "params.yaml")
    return str(err.value)


def test_project_params_are_valid() -> None:
    params = load_params(PROJECT)
    assert params.model_names()[0] == "teacher"


def test_unknown_key_is_named(raw: dict) -> None:
    raw["train_teacher"]["fit"]["epohcs"] = 3
    assert "params.yaml: train_teacher.fit.epohcs: Extra inputs are not permitted" in error_of(raw)


def test_wrong_type_is_named(raw: dict) -> None:
    raw["evaluate"]["runs"] = "many"
    assert "evaluate.runs: Input should be a valid integer" in error_of(raw)


def test_out_of_range_is_named_with_value(raw: dict) -> None:
    raw["ingest"]["val_fraction"] = 0.9
    assert "ingest.val_fraction: Input should be less than 0.5 (got 0.9)" in error_of(raw)


def test_missing_key_is_named(raw: dict) -> None:
    del raw["gate"]["min_accuracy"]
    assert "gate.min_accuracy: Field required" in error_of(raw)


def test_every_problem_is_reported_at_once(raw: dict) -> None:
    raw["train_teacher"]["fit"]["lr"] = -1
    raw["evaluate"]["threads"] = 0
    message = error_of(raw)
    assert "train_teacher.fit.lr" in message and "evaluate.threads" in message


def candidate(raw: dict, stage: str) -> tuple[str, dict]:
    name = next(iter(raw[stage]))
    return name, raw[stage][name]


def test_sparsity_of_one_is_rejected(raw: dict) -> None:
    name, cfg = candidate(raw, "prune")
    cfg["sparsity"] = 1.0
    assert f"prune.{name}.sparsity: Input should be less than 1" in error_of(raw)


def test_non_positive_temperature_is_rejected(raw: dict) -> None:
    name, cfg = candidate(raw, "distill")
    cfg["temperature"] = 0
    assert f"distill.{name}.temperature: Input should be greater than 0" in error_of(raw)


def test_int4_dynamic_quantization_is_rejected(raw: dict) -> None:
    name, cfg = candidate(raw, "quantize")
    cfg.update(mode="dynamic", weights="int4")
    assert f"quantize.{name}: weights int4 needs mode static" in error_of(raw)


def test_unknown_upstream_is_rejected(raw: dict) -> None:
    name, cfg = candidate(raw, "quantize")
    cfg["upstream"] = "nonexistent"
    assert f"quantize.{name}.upstream: unknown model 'nonexistent'" in error_of(raw)


def test_cycle_is_rejected(raw: dict) -> None:
    raw["distill"]["a"] = copy.deepcopy(candidate(raw, "distill")[1]) | {"upstream": "b"}
    raw["prune"]["b"] = copy.deepcopy(candidate(raw, "prune")[1]) | {"upstream": "a"}
    assert "the candidate graph has a cycle among: distill.a, prune.b" in error_of(raw)


def test_duplicate_model_name_is_rejected(raw: dict) -> None:
    name, cfg = candidate(raw, "distill")
    raw["prune"][name] = copy.deepcopy(candidate(raw, "prune")[1])
    assert f"prune.{name}: name already used by distill" in error_of(raw)


def test_models_come_after_their_upstreams() -> None:
    params = load_params(PROJECT)
    order = params.model_names()
    for name, ups in params.upstreams().items():
        assert all(order.index(up) < order.index(name) for up in ups)


def test_workload_sums_the_epochs_of_everything_built_from_a_model() -> None:
    params = load_params(PROJECT)
    work, graph = params.workload(), params.upstreams()
    for name, total in work.items():  # by brute force: walk up from every candidate
        built_from = []
        for other in graph:
            todo, seen = list(graph[other]), set()
            while todo:
                up = todo.pop()
                seen.add(up)
                todo += [u for u in graph.get(up, []) if u not in seen]
            built_from += [other] if name in seen else []
        assert total == sum(map(params.epochs, [name, *built_from])), name
    soup = params.merge["teacher_ch50_soup"]
    assert params.epochs("teacher_ch50_soup") == sum(i.epochs for i in soup.ingredients) > 0
    assert params.epochs("teacher_ch50_int8") == 0  # post-training: no epoch
    assert work["teacher"] == sum(map(params.epochs, params.model_names()))
    assert work["teacher_ch50"] > work["kd_small"] > work["ce_small"] == 6


def test_smoke_profile_overlays_params(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT / "profiles", tmp_path / "profiles")
    params = apply_profile(tmp_path, "smoke")
    assert params.ingest.train_per_class is not None
    assert load_params(tmp_path) == params  # written back, still valid


def test_the_ensembles_profile_adds_its_members_and_merges_to_the_default_graph(
    tmp_path: Path,
) -> None:
    before = load_params(workspace(tmp_path))
    params = apply_profile(tmp_path, "ensembles")
    members = ["ce_deep", "ce_deep_s1", "ce_deep_s2"]
    assert set(params.model_names()) - set(before.model_names()) == {
        *members,
        "ensemble_small",
        "ensemble_kd_small",
    }
    assert params.merge["ensemble_small"].upstreams == members
    assert params.merge["ensemble_kd_small"].kind == "distill_ensemble"
    assert params.distill["kd_small"] == before.distill["kd_small"]  # the default graph stays
    assert load_params(tmp_path) == params == safe_dump_path(tmp_path, "ensembles")


def test_the_fastest_profile_turns_the_budget_profile_to_speed(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT / "profiles", tmp_path / "profiles")
    apply_profile(tmp_path, "budget")
    params = apply_profile(tmp_path, "fastest")
    assert params.search.finalists > 0 and not params.prune  # still the budget profile's search
    # the search runs alone: its trials take both cores, the finalists (two at a time) one each
    assert (params.search.trial_fit.threads, params.search.fit.threads) == (2, 1)
    assert (params.search.objective, params.gate.policy) == ("fastest", "fastest")
    assert params.search.max_accuracy_drop == params.gate.max_accuracy_drop == 0.005
    assert load_params(tmp_path) == params


def test_the_resnet_fastest_profile_is_the_fastest_budget_on_the_resnet_network(
    tmp_path: Path,
) -> None:
    workspace(tmp_path)
    for name in ("resnet", "budget", "fastest"):
        apply_profile(tmp_path, name)
    params = apply_profile(tmp_path, "resnet-fastest")
    assert params.train_teacher.arch.class_path == "examples.user_models.ResNet"
    assert not (params.prune or params.quantize) and params.search.finalists > 0
    assert (params.search.objective, params.search.max_accuracy_drop) == ("fastest", 0.005)
    assert params.flow.workers == 1
    assert params.search.trial_fit.threads == params.search.fit.threads == 2
    assert params.search.round_to == 8  # the resnet graph's candidates' rounding
    assert load_params(tmp_path) == params


def workspace(tmp_path: Path) -> Path:
    """A copy of the project's params.yaml, profiles and pyproject.toml (its allow-list)."""
    for name in ("params.yaml", "pyproject.toml"):
        shutil.copy(PROJECT / name, tmp_path / name)
    shutil.copytree(PROJECT / "profiles", tmp_path / "profiles")
    return tmp_path


def comments(text: str) -> list[str]:
    """The comment texts of a YAML file, in order ('#' to the end of the line)."""
    return [line[line.index("#") :].strip() for line in text.splitlines() if "#" in line]


def safe_dump_path(root: Path, profile: str) -> Params:
    """What a profile gave before the round trip: PyYAML's plain merge, written with
    yaml.safe_dump and read back."""
    overlay = yaml.safe_load((root / "profiles" / f"{profile}.yaml").read_text())
    whole = overlay.pop("replace", None) or []
    merged = merge(yaml.safe_load((root / "params.yaml").read_text()), overlay)
    for dotted in whole:
        replace(merged, overlay, dotted, root)
    dumped = yaml.safe_dump(validate(merged, "x").model_dump(mode="json"), sort_keys=False)
    return validate(yaml.safe_load(dumped), "x")


@pytest.mark.parametrize("profile", ["smoke", "resnet"])
def test_a_profile_keeps_the_comments_and_loads_like_before(tmp_path: Path, profile: str) -> None:
    root = workspace(tmp_path)
    before = (root / "params.yaml").read_text()
    params = apply_profile(root, profile)
    after = (root / "params.yaml").read_text()
    assert params == load_params(root) == safe_dump_path(root, profile)
    assert list(yaml.safe_load(after)) == list(yaml.safe_load(before))  # the sections' order
    if profile == "smoke":  # merged key by key: every comment stays, beside its key
        assert comments(after) == comments(before)
        assert re.search(r"\n    epochs: 3 +# without label smoothing 12 epochs", after)
    else:  # the candidate graph is replaced whole: its comments come from the profile
        ours = comments(before)
        graph_at = next(i for i, c in enumerate(ours) if c.startswith("# The candidate graph"))
        assert comments(after)[:graph_at] == ours[:graph_at]  # ingest's and the teacher's
        profile_text = (root / "profiles" / "resnet.yaml").read_text()
        graph = profile_text[profile_text.index("prune:") : profile_text.index("gate:")]
        assert all(c in comments(after) for c in comments(graph))


def test_the_round_trip_leaves_params_yaml_byte_identical() -> None:
    """What a write does not change stays as written: quotes, nulls, long flow lines, indents."""
    text = (PROJECT / "params.yaml").read_text()
    assert dump(read_yaml(PROJECT / "params.yaml", round_trip=True)) == text


def test_applying_a_profile_twice_writes_nothing_the_second_time(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    apply_profile(root, "smoke")
    once = (root / "params.yaml").stat().st_mtime_ns, (root / "params.yaml").read_bytes()
    apply_profile(root, "smoke")
    assert ((root / "params.yaml").stat().st_mtime_ns, (root / "params.yaml").read_bytes()) == once


@pytest.mark.parametrize(
    ("overlay", "message"),
    [("train_teacher: {fit: {lr: -1}}\n", "train_teacher.fit.lr: Input should be greater"),
     ("replace: [train_teacher.arch]\ntrain_teacher:\n  arch: {class_path: evil.Net, "
      "init_args: {}}\n", "'evil.Net' is not in the modules the workspace allows"),
     ("replace: [gate.policy]\ngate: {}\n", "replace names 'gate.policy'"),
     ("gate: {policy: [unclosed\n", "mine.yaml: not valid YAML")],
    ids=["bad_value", "class_path_not_allowed", "bad_replace", "bad_yaml"],
)  # fmt: skip
def test_a_refused_profile_leaves_params_byte_identical(
    tmp_path: Path, overlay: str, message: str
) -> None:
    root = workspace(tmp_path)
    (root / "profiles" / "mine.yaml").write_text(overlay)
    before = (root / "params.yaml").read_bytes()
    with pytest.raises(ParamsError, match=message):
        apply_profile(root, "mine")
    assert (root / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == ["params.yaml", "profiles", "pyproject.toml"]


def test_dvc_set_param_edits_the_written_file(tmp_path: Path) -> None:
    """`dvc exp run -S` (DVC's hydra overrides) edits what a profile wrote: no anchors or
    aliases, under which DVC's override path silently loses edits."""
    from dvc.utils.hydra import apply_overrides

    root = workspace(tmp_path)
    params = apply_profile(root, "smoke")
    events = list(yaml.parse((root / "params.yaml").read_text()))
    assert not [e for e in events if isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None)]
    apply_overrides(root / "params.yaml", ["distill.kd_small.fit.epochs=4", "gate.policy=fastest"])
    edited = load_params(root)
    assert edited.distill["kd_small"].fit.epochs == 4 and edited.gate.policy == "fastest"
    assert edited.distill["ce_small"] == params.distill["ce_small"]  # its twin, untouched


def test_run_params_are_written_keeping_the_comments(tmp_path: Path) -> None:
    """A run's params (the Prefect UI's form) rewrite only the values that changed."""
    root = workspace(tmp_path)
    before = (root / "params.yaml").read_text()
    params = load_params(root)
    fit = params.train_teacher.fit.model_copy(update={"epochs": 3})
    ingest = params.ingest.model_copy(update={"classes": ["yes", "no", *params.ingest.classes[2:]]})
    distill = {k: v for k, v in params.distill.items() if k != "ce_small"}
    changed = params.model_copy(update={
        "train_teacher": params.train_teacher.model_copy(update={"fit": fit}),
        "ingest": ingest, "distill": distill,
    })  # fmt: skip
    assert write_params(root, changed) is True
    after = (root / "params.yaml").read_text()
    assert load_params(root) == changed  # "yes"/"no" are class names, not booleans (YAML 1.2)
    assert re.search(r"\n    epochs: 3 +# without label smoothing 12 epochs", after)
    assert "ce_small:" not in after and "kd_small:  # a 24k-parameter student" in after
    lost = set(comments(before)) - set(comments(after))  # only the removed candidate's
    assert len(lost) == 1 and lost.pop().startswith("# the same student, epochs and seed")
    assert write_params(root, changed) is False


def test_a_section_emptied_by_a_run_is_written_as_an_empty_mapping(tmp_path: Path) -> None:
    """A UI form's `{}` for a section whose first entry has comment lines above it (merge's):
    written as `merge: {}`, the lines before the next section kept, and the file loads."""
    root = workspace(tmp_path)
    params = load_params(root)
    assert re.search(r"\nmerge:\n +#", (root / "params.yaml").read_text())
    emptied = params.model_copy(update={"merge": {}})
    assert write_params(root, emptied) is True
    after = (root / "params.yaml").read_text()
    assert "\nmerge: {}\n" in after and "\n# The budget search:" in after
    assert load_params(root) == emptied


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT / "profiles", tmp_path / "profiles")
    known = "known: budget, ensembles, fastest, resnet"
    with pytest.raises(ParamsError, match=f"no such profile .*{known}"):
        apply_profile(tmp_path, "tiny")


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("ingest: [unclosed\n")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load_params(tmp_path)


def test_params_round_trip_through_yaml(raw: dict) -> None:
    params = validate(raw, "params.yaml")
    assert validate(yaml.safe_load(yaml.safe_dump(params.model_dump(mode="json"))), "x") == params


def test_valid_run_params_replace_a_broken_params_file(tmp_path: Path) -> None:
    params = load_params(PROJECT)
    (tmp_path / "params.yaml").write_text("ingest: [unclosed\n")
    assert write_params(tmp_path, params) is True
    assert load_params(tmp_path) == params
    assert write_params(tmp_path, params) is False  # already there: untouched


# -- values a user or a UI form can send (issue: hardening) ---------------------------------


@pytest.mark.parametrize("name", ["../evil", "Kd", "kd small", "kd@1", "kd/x", "kd-x", ""])
def test_unsafe_candidate_names_are_refused(raw: dict, name: str) -> None:
    raw["distill"][name] = raw["distill"].pop("kd_small")
    raw["merge"]["ensemble_small"]["upstreams"] = ["ce_small", "kd_small_ch50"]
    raw["prune"]["kd_small_ch50"]["upstream"] = "ce_small"
    assert f"distill: name must match ^[a-z0-9_]+$ (got {name!r})" in error_of(raw)


def test_zero_channels_are_refused_naming_the_index(raw: dict) -> None:
    raw["train_teacher"]["arch"]["channels"] = [0, 8, 16]
    message = error_of(raw)
    assert "train_teacher.arch.channels.0: Input should be greater than or equal to 1" in message


@pytest.mark.parametrize(
    "path", [("promote", "endpoint_url"), ("flow", "dask_address"), ("ingest", "source"),
             ("promote", "registry"), ("quantize", "teacher_ch50_int8", "upstream")],
)  # fmt: skip
def test_an_empty_string_is_refused(raw: dict, path: tuple[str, ...]) -> None:
    *parents, key = path
    section = raw
    for part in parents:
        section = section[part]
    section[key] = ""
    assert f"{'.'.join(path)}: empty; give a value, or null where the key allows none" in error_of(
        raw
    )


def test_quantize_needs_a_float_upstream(raw: dict) -> None:
    raw["quantize"]["twice"] = raw["quantize"]["teacher_ch50_int8"] | {
        "upstream": "teacher_ch50_int8"
    }
    assert (
        "quantize.twice.upstream: 'teacher_ch50_int8' is already quantized; quantize needs a "
        "float upstream (e.g. 'teacher_ch50')"
    ) in error_of(raw)


@pytest.mark.parametrize(("stage", "onnx_only"), [("prune", "teacher_ch50_int8"),
                                                  ("prune", "ensemble_small")])  # fmt: skip
def test_torch_stages_refuse_an_onnx_only_upstream(raw: dict, stage: str, onnx_only: str) -> None:
    raw["prune"]["teacher_ch50_sp70"]["upstream"] = onnx_only
    assert f"prune.teacher_ch50_sp70.upstream: {onnx_only!r} exists only as ONNX" in error_of(raw)


def test_a_finalist_that_may_ship_quantized_is_no_float_upstream(raw: dict) -> None:
    """Which weights a finalist ships is known only after the search: while search.weights
    allows int8/int4, no stage may need it as a float model; with fp32 only, every stage may."""
    raw["ingest"]["search_fraction"] = 0.1
    raw["search"]["finalists"] = 2
    raw["prune"]["teacher_ch50_sp70"]["upstream"] = "search_2"
    assert "prune.teacher_ch50_sp70.upstream: 'search_2' exists only as ONNX" in error_of(raw)
    raw["prune"]["teacher_ch50_sp70"]["upstream"] = "teacher"
    raw["quantize"]["teacher_ch50_int8"]["upstream"] = "search_uniform"
    assert (
        "quantize.teacher_ch50_int8.upstream: 'search_uniform' may ship quantized (search.weights "
        "is ['fp32', 'int8', 'int4'])"
    ) in error_of(raw)
    raw["search"]["weights"] = ["fp32"]
    raw["prune"]["teacher_ch50_sp70"]["upstream"] = "search_2"
    assert Params.model_validate(raw).upstreams()["teacher_ch50_int8"] == ["search_uniform"]


def test_quantize_keeps_the_per_channel_grid_qat_trained_on(raw: dict) -> None:
    raw["quantize"]["teacher_ch50_sp60_qat_int4"]["per_channel"] = False
    assert (
        "quantize.teacher_ch50_sp60_qat_int4.per_channel: false, but its upstream "
        "prune.teacher_ch50_sp60_qat was fine-tuned on a per-channel int4 grid"
    ) in error_of(raw)


# -- every key of params.yaml can be set with `dvc exp run -S` ---------------------------------


def leaves(node: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(key path, value) of every leaf of a YAML mapping; a list of mappings (a soup's
    ingredients) is walked by index, as `-S key.0.sub=...` sets it; any other list is one leaf."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, (*path, key))]
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return [leaf for i, value in enumerate(node) for leaf in leaves(value, (*path, str(i)))]
    return [(path, node)]


def other_value(value: object) -> str:
    """A Hydra override value of the same kind as value and different from it."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int | float):
        return str(value + 1)
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in [*value, *value[-1:]] or [1]) + "]"
    return "changed"  # strings and nulls


@pytest.mark.parametrize("file", ["params.yaml", "profiles/smoke.yaml"])
def test_every_leaf_can_be_overridden(file: str, tmp_path: Path) -> None:
    """DVC's own `-S` path (dvc.utils.hydra.apply_overrides) sets each key given, and only it:
    with every leaf overridden in one call, each ends with its own new value, so no edit was
    lost or landed on another key. The file has no YAML anchor or alias, under which one edit
    would change two keys (both given the same new value here, so this checks them apart)."""
    from dvc.utils.hydra import apply_overrides

    text = (PROJECT / file).read_text()
    events = list(yaml.parse(text))
    assert not [e for e in events if isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None)]
    original = leaves(read_yaml(PROJECT / file))
    path = tmp_path / "params.yaml"
    path.write_text(text)
    apply_overrides(path, [f"{'.'.join(key)}={other_value(value)}" for key, value in original])
    after = leaves(read_yaml(path))
    assert [key for key, _ in after] == [key for key, _ in original]
    for (key, value), (_, now) in zip(original, after, strict=True):
        assert now == yaml.safe_load(other_value(value)), f"-S {'.'.join(key)} gave {now!r}"


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("flow", "cron", "every day", "flow.cron: String should match pattern"),
        ("flow", "timezone", "Mars/Olympus", "flow.timezone: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_schedule_fields_are_checked(
    raw: dict, section: str, key: str, value: str, message: str
) -> None:
    raw[section][key] = value
    assert message in error_of(raw)


def test_merge_kinds_get_the_upstreams_and_student_they_need(raw: dict) -> None:
    raw["merge"]["teacher_ch50_soup"]["upstreams"] = ["teacher_ch50", "teacher"]
    raw["merge"]["ensemble_small"]["kind"] = "distill_ensemble"
    message = error_of(raw)
    assert "merge.teacher_ch50_soup: upstreams: kind soup_greedy fine-tunes one shared" in message
    assert "merge.ensemble_small: student: kind distill_ensemble needs a student" in message


def test_zero_teacher_epochs_need_an_init_and_only_the_teacher_may_have_them(raw: dict) -> None:
    raw["train_teacher"]["fit"]["epochs"] = 0
    assert "train_teacher: train_teacher.fit.epochs is 0 with no train_teacher.init" in error_of(
        raw
    )
    raw["train_teacher"]["init"] = "teacher.safetensors"
    assert validate(raw, "params.yaml").train_teacher.fit.epochs == 0  # compress-only
    for stage in ("distill", "prune"):
        name, cfg = candidate(raw, stage)
        cfg["fit"]["epochs"] = 0
        message = f"{stage}.{name}.fit.epochs: Input should be greater than or equal to 1 (got 0)"
        assert message in error_of(raw)


def test_a_class_path_arch_is_its_own_variant_and_errors_name_its_keys(raw: dict) -> None:
    raw["train_teacher"]["arch"] = {"class_path": "mynets.ResNet", "init_args": {"widths": [8]}}
    assert validate(raw, "params.yaml").train_teacher.arch.class_path == "mynets.ResNet"
    raw["train_teacher"]["arch"] = {"class_path": "mynets.ResNet", "init_args": {}, "dropout": 0}
    message = error_of(raw)
    assert "train_teacher.arch.dropout: Extra inputs are not permitted" in message
    assert "channels" not in message  # the built-in's keys are not asked of a class_path arch
    raw["train_teacher"]["arch"] = {"class_path": "os.system; rm", "init_args": {}}
    assert "train_teacher.arch.class_path: String should match pattern" in error_of(raw)


def test_a_search_with_students_that_cannot_be_scaled_is_refused_before_anything_runs(
    raw: dict,
) -> None:
    raw["search"]["finalists"], raw["ingest"]["search_fraction"] = 2, 0.1
    raw["search"]["students"]["widths"] = [0.5, 1.0]
    raw["train_teacher"]["arch"] = {"class_path": "mynets.Net", "init_args": {"width": 1.0}}
    raw["search"]["students"]["width_arg"] = "nosuch"
    message = error_of(raw)
    assert "params.yaml: search.students.width_arg is 'nosuch'" in message
    assert "give no number (or list of numbers) for 'nosuch'" in message
    raw["search"]["students"]["width_arg"] = "width"
    assert validate(raw, "params.yaml").search.students.width_arg == "width"
    raw["search"]["students"]["widths"] = [1.0]  # no student: nothing to scale
    raw["search"]["students"]["width_arg"] = "nosuch"
    assert validate(raw, "params.yaml").search.students.width_arg == "nosuch"


def test_a_profile_replaces_whole_the_keys_it_lists(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "pyproject.toml").write_text('[tool.squeeze]\nallowed_modules = ["mynets"]\n')
    (tmp_path / "profiles").mkdir()
    arch = {"class_path": "mynets.ResNet", "init_args": {"num_classes": 10}}
    overlay = {"replace": ["train_teacher.arch", "prune", "quantize", "merge"],
               "train_teacher": {"arch": arch, "fit": {"epochs": 2}},
               "distill": {"kd_small": {"fit": {"epochs": 3}}},
               "prune": {}, "quantize": {}, "merge": {}}  # fmt: skip
    (tmp_path / "profiles" / "mine.yaml").write_text(yaml.safe_dump(overlay))
    params = apply_profile(tmp_path, "mine")
    assert params.train_teacher.arch.model_dump() == arch  # not merged into the convnet's keys
    assert params.train_teacher.fit.epochs == 2 and params.train_teacher.fit.lr == 0.1  # merged
    assert params.prune == {} and params.quantize == {} and params.merge == {}
    assert params.distill["kd_small"].fit.epochs == 3 and "ce_small" in params.distill
    overlay["replace"] = ["gate.policy"]
    (tmp_path / "profiles" / "mine.yaml").write_text(yaml.safe_dump(overlay))
    with pytest.raises(ParamsError, match="replace names 'gate.policy', which the profile does"):
        apply_profile(tmp_path, "mine")


MEASURED = re.compile(r"\d+\.\d+ ?(×|%|ms|s\b)|\d+× faster")


def descriptions(schema: object) -> list[str]:
    """Every "description" anywhere in a JSON schema."""
    if isinstance(schema, dict):
        found = [schema["description"]] if isinstance(schema.get("description"), str) else []
        return found + [d for value in schema.values() for d in descriptions(value)]
    if isinstance(schema, list):
        return [d for value in schema for d in descriptions(value)]
    return []


def test_the_schema_carries_no_measured_figure() -> None:
    """Descriptions are the UI form's help text; a measured ratio, accuracy or time there would
    go stale when the code or data changes. Figures live in benchmarks/RESULTS*.md."""
    texts = descriptions(Params.model_json_schema())
    assert len(texts) > 50
    assert [t for t in texts if MEASURED.search(t)] == []
