"""The whole of params.yaml (squeeze.config.params.Params, the Prefect UI's run form) and its
candidate graph: which model is built from which, in what order, and what each stage can read.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from squeeze.config.errors import ParamsError, format_errors
from squeeze.config.sections import (
    DistillParams,
    EvaluateParams,
    FlowParams,
    GateParams,
    IngestParams,
    MergeParams,
    Name,
    PromoteParams,
    PruneParams,
    QuantizeParams,
    SearchParams,
    Section,
    TrainTeacherParams,
)

COMPRESSION_STAGES = ("distill", "prune", "quantize", "merge")
FINALIST = "finalist"  # the stage that builds a search finalist (stages/finalist.py)
UNIFORM = "search_uniform"  # the finalist of the uniform baseline search
# the keys of params.search a finalist's build reads besides its recipe (squeeze.methods.search.
# prune_cfg, quantize_cfg): its DVC stage depends on these alone, so a new budget or more trials
# rebuild only the finalists whose recipe changed
FINALIST_KEYS = ("max_sparsity", "importance", "round_to", "calibration_samples", "steps", "fit",
                 "zeroing_epochs", "students.width_arg", "students.alpha", "students.temperature",
                 "students.fit")  # fmt: skip


def is_width(value: Any) -> bool:
    """Whether value is what a width can scale: a number, or a non-empty list of numbers."""
    items = value if isinstance(value, list) and value else [value]
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in items)


def width_problem(arch: dict[str, Any], width_arg: str | None) -> str | None:
    """Why search.students.width_arg cannot scale the network of arch (an arch record: the
    built-in convnet's, or a class_path network's with its init_args), naming the key and
    what to write; None when it can (squeeze.methods.students.student_arch scales it)."""
    key = "search.students.width_arg"
    if "class_path" not in arch:
        if width_arg is None:
            return None
        return (f"{key} is {width_arg!r}, but the teacher is the built-in convnet, whose "
                "channels a width scales: set it to null")  # fmt: skip
    if width_arg is not None and is_width(arch["init_args"].get(width_arg)):
        return None
    return (
        f"{key} is {width_arg!r}: search.students.widths asks for students of "
        f"{arch['class_path']}, but its init_args {arch['init_args']} give no number (or list "
        f"of numbers) for {width_arg!r} to scale; name the init argument that sets its width "
        "and write its value in train_teacher.arch.init_args (e.g. width: 1.0), or set "
        "search.students.widths to [1.0]"
    )


class Params(Section):
    """All squeeze parameters; the Prefect UI renders this as the run form."""

    ingest: IngestParams
    train_teacher: TrainTeacherParams
    distill: dict[Name, DistillParams] = Field(
        description="Candidates distilled into a smaller student, by name ({} = none)."
    )
    prune: dict[Name, PruneParams] = Field(
        description="Candidates pruned (unstructured or structured) and fine-tuned, by name."
    )
    quantize: dict[Name, QuantizeParams] = Field(
        description="Candidates quantized to int8 or int4 in onnxruntime, by name."
    )
    merge: dict[Name, MergeParams] = Field(
        description="Candidates merged from others (ensembles, weight soups), by name."
    )
    search: SearchParams
    evaluate: EvaluateParams
    gate: GateParams
    promote: PromoteParams
    flow: FlowParams

    def finalists(self) -> list[str]:
        """The candidates the budget search builds (search.finalists > 0): search_1..N, built
        from the teacher, and the uniform baseline's; [] without a search."""
        count = self.search.finalists
        return [f"search_{i}" for i in range(1, count + 1)] + ([UNIFORM] if count else [])

    def upstreams(self) -> dict[str, list[str]]:
        """Every candidate model name -> the models it is built from."""
        graph: dict[str, list[str]] = {name: ["teacher"] for name in self.finalists()}
        for stage in COMPRESSION_STAGES:
            for name, cfg in getattr(self, stage).items():
                graph[name] = list(cfg.upstreams) if stage == "merge" else [cfg.upstream]
        return graph

    def workload(self) -> dict[str, int]:
        """Every model name -> the fine-tuning epochs of its build and of every build made from
        it, directly or not: what the flow's scheduler (flows.scheduler) expects to wait on it.
        An estimate: an epoch of a small student costs less than one of the teacher, and a
        post-training quantization or an ensemble counts 0."""
        graph = self.upstreams()
        below: dict[str, set[str]] = {name: set() for name in self.model_names()}
        for name in reversed(self.model_names()):  # a model's dependents come after it
            for up in graph.get(name, []):
                below[up] |= below[name] | {name}
        return {name: sum(map(self.epochs, found | {name})) for name, found in below.items()}

    def epochs(self, name: str) -> int:
        """The training or fine-tuning epochs of the build of model name (a finalist's
        channel and zeroing passes, a soup's ingredients)."""
        stage = self.stage_of(name)
        if stage == FINALIST:
            return self.search.fit.epochs + self.search.zeroing_epochs
        if stage == "quantize":
            return 0
        cfg = self.train_teacher if stage == "train_teacher" else getattr(self, stage)[name]
        if stage == "merge":
            soup = sum(ingredient.epochs for ingredient in cfg.ingredients)
            return soup or (cfg.fit.epochs if cfg.kind == "distill_ensemble" else 0)
        return cfg.fit.epochs

    def stage_of(self, name: str) -> str:
        """The stage that builds a model ('train_teacher' for the teacher)."""
        if name in self.finalists():
            return FINALIST
        return next((s for s in COMPRESSION_STAGES if name in getattr(self, s)), "train_teacher")

    def section_of(self, stage: str) -> dict[str, Any]:
        """The candidates `stage` builds, by name, with their params: a compression section, or
        for FINALIST every finalist with params.search (what each is searched and built by)."""
        if stage == FINALIST:
            return dict.fromkeys(self.finalists(), self.search)
        return getattr(self, stage)

    def model_names(self) -> list[str]:
        """The teacher, then every candidate after all of its upstreams (topological order)."""
        graph, done = self.upstreams(), ["teacher"]
        while len(done) < len(graph) + 1:
            done += [n for n, ups in graph.items() if n not in done and set(ups) <= set(done)]
        return done

    @model_validator(mode="after")
    def check_students(self) -> Params:
        """A search with students (a width below 1) can scale the teacher's network: refused
        here, before the teacher trains, not when the search stage starts."""
        cfg = self.search
        if cfg.finalists and min(cfg.students.widths) < 1:
            arch = self.train_teacher.arch.model_dump(mode="json")
            problem = width_problem(arch, cfg.students.width_arg)
            if problem:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def check_graph(self) -> Params:
        """Names are unique across stages, upstreams exist, and there is no cycle."""
        seen = dict.fromkeys(self.finalists(), "the budget search (search.finalists)")
        for stage in COMPRESSION_STAGES:
            for name in getattr(self, stage):
                if name == "teacher" or name in seen:
                    other = seen.get(name, "train_teacher")
                    raise ValueError(f"{stage}.{name}: name already used by {other}")
                seen[name] = stage
        if self.search.finalists and not self.ingest.search_fraction:
            raise ValueError(
                f"search.finalists is {self.search.finalists} but ingest.search_fraction is 0: "
                "the search scores its trials on a split of its own; set ingest.search_fraction "
                "(e.g. 0.1), or search.finalists: 0"
            )
        graph = self.upstreams()
        for name, ups in graph.items():
            for up in ups:
                if up != "teacher" and up not in graph:
                    raise ValueError(f"{seen[name]}.{name}.upstream: unknown model {up!r}")
        self.check_float_upstreams()
        remaining = dict(graph)
        built = {"teacher"}
        while remaining:
            ready = [n for n, ups in remaining.items() if set(ups) <= built]
            if not ready:
                cycle = ", ".join(f"{seen[n]}.{n}" for n in sorted(remaining))
                raise ValueError(f"the candidate graph has a cycle among: {cycle}")
            built.update(ready)
            for n in ready:
                del remaining[n]
        return self

    def onnx_only(self) -> set[str]:
        """Models that exist only as ONNX: quantized ones, logit ensembles, and the budget
        search's finalists when search.weights lets a trial ship int8/int4 (which weights a
        finalist ships is known only after the search)."""
        ensembles = {n for n, cfg in self.merge.items() if cfg.kind == "ensemble"}
        return set(self.quantize) | ensembles | self.maybe_quantized()

    def maybe_quantized(self) -> set[str]:
        """The finalists that may ship quantized: all of them unless search.weights is fp32."""
        return set(self.finalists()) if set(self.search.weights) - {"fp32"} else set()

    def check_float_upstreams(self) -> None:
        """Every upstream is something its stage can read: distill, prune and merge need a
        torch checkpoint (not an ONNX-only model); quantize needs a float model (not an
        already quantized one), and on the grid a quantization-aware upstream was trained on.
        """
        onnx_only = self.onnx_only()
        for stage in ("distill", "prune", "merge"):
            for name, cfg in getattr(self, stage).items():
                key = "upstreams" if stage == "merge" else "upstream"
                ups = cfg.upstreams if stage == "merge" else [cfg.upstream]
                for up in ups:
                    if up in onnx_only:
                        raise ValueError(
                            f"{stage}.{name}.{key}: {up!r} exists only as ONNX (quantized, an "
                            f"ensemble, or a finalist that search.weights lets ship int8/int4); "
                            f"{stage} needs a torch model: use {up!r}'s own upstream, or "
                            "search.weights: [fp32] for a finalist"
                        )
        for name, cfg in self.quantize.items():
            if cfg.upstream in self.quantize:
                raise ValueError(
                    f"quantize.{name}.upstream: {cfg.upstream!r} is already quantized; quantize "
                    f"needs a float upstream (e.g. {self.quantize[cfg.upstream].upstream!r})"
                )
            if cfg.upstream in self.maybe_quantized():
                raise ValueError(
                    f"quantize.{name}.upstream: {cfg.upstream!r} may ship quantized (search."
                    f"weights is {self.search.weights}); quantize needs a float upstream: set "
                    "search.weights: [fp32], or let the search choose the weights"
                )
            trained = self.prune.get(cfg.upstream)
            if trained is not None and trained.qat is not None and not cfg.per_channel:
                raise ValueError(
                    f"quantize.{name}.per_channel: false, but its upstream prune.{cfg.upstream} "
                    f"was fine-tuned on a per-channel {trained.qat} grid (qat); set per_channel: "
                    "true, or qat: null"
                )


def validate(data: Any, origin: str) -> Params:
    """Validate a mapping against the schema; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(format_errors(err, origin)) from None
