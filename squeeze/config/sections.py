"""The sections of params.yaml: one pydantic model per stage, validated before any work starts.

params.yaml is the only place a value lives, so the schema has no defaults: a missing key is an
error, as is an unknown key, a wrong type or an out-of-range value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from squeeze.config.locations import check_endpoint, check_location

# A model's name is a DVC stage suffix, a params.yaml key and a folder under models/ at once:
# only what is safe as all three (no "..", "/", "@", spaces or capitals).
NAME_PATTERN = r"^[a-z0-9_]+$"


Name = Annotated[
    str, Field(pattern=NAME_PATTERN, description="A model name: [a-z0-9_]+ (stage, key, folder).")
]


def check_source(value: str) -> str:
    """ingest.source: 'auto', an http(s):// base URL, or a location (check_location): a typo such
    as `s3:/bucket` is refused here rather than read as a local folder named `s3:`."""
    return value if value == "auto" or value.startswith(("http://", "https://")) else (
        check_location(value))  # fmt: skip


def check_url(value: str) -> str:
    """An http(s):// URL (ingest.mirror)."""
    if not value.startswith(("http://", "https://")) or value[-3:] == "://":
        raise ValueError(f"{value!r} is not an http(s):// URL, e.g. https://host/path/")
    return value


# Values that name a place: refused at params load when they look like a URL but are not one
Location = Annotated[str, AfterValidator(check_location)]
Endpoint = Annotated[str | None, AfterValidator(check_endpoint)]


class Section(BaseModel):
    # no field takes an empty string: a cleared field of a UI form sends "", which must not
    # pass as a value (a null field says so with null)
    model_config = ConfigDict(extra="forbid", frozen=True, str_min_length=1)


class IngestParams(Section):
    """Where the data comes from, how its images are read, and how it is split into train /
    validation / test."""

    format: Literal["idx", "imagefolder"] = Field(
        description="idx: the four MNIST-style IDX files (train/t10k images and labels); "
        "imagefolder: one folder per class (train/<class>/*, test/<class>/*, or only <class>/* "
        "split by test_fraction), images in any format Pillow reads."
    )
    source: Annotated[str, AfterValidator(check_source)] = Field(
        description="Where the data comes from: a local folder, s3://bucket/prefix, an http(s):// "
        "base URL (idx only), or 'auto' (idx: the system copy of the Debian package "
        "dataset-fashion-mnist, else the mirror)."
    )
    endpoint_url: Endpoint = Field(
        description="S3 endpoint for an s3:// source (MinIO, moto); null for AWS."
    )
    mirror: Annotated[str, AfterValidator(check_url)] = Field(
        description="Base URL of the upstream download used by source 'auto'."
    )
    classes: list[Annotated[str, Field(min_length=1)]] | None = Field(
        description="idx: the names of labels 0..K-1 (null: '0'..'K-1'); imagefolder: null, "
        "the names are the class folders' names, sorted."
    )
    channels: Literal[1, 3] = Field(
        description="Image channels the model sees: 1 (grayscale) or 3 (RGB); images in "
        "another mode are converted (Pillow) and counted."
    )
    image_size: list[Annotated[int, Field(ge=4, le=4096)]] = Field(
        min_length=2, max_length=2, description="[height, width] the model sees, in pixels."
    )
    resize: Literal["exact", "shorter_side_crop"] = Field(
        description="How an image of another size is brought to image_size: exact (stretch to "
        "it) or shorter_side_crop (scale the shorter side to fit, then crop the centre)."
    )
    test_fraction: float | None = Field(
        gt=0, lt=0.5,
        description="imagefolder without train/ and test/ folders: share of every class held "
        "out as the test split (seeded); null otherwise.",
    )  # fmt: skip
    on_bad_image: Literal["fail", "skip"] = Field(
        description="A file that is not a readable image: fail (stop ingest naming it) or skip "
        "(leave it out and count it in the ingest report)."
    )
    val_fraction: float = Field(
        gt=0, lt=0.5, description="Share of the training images held out for validation."
    )
    search_fraction: float = Field(
        ge=0, lt=0.5,
        description="Share of the training images (after validation is held out) held out as "
        "the search split, on which the budget search scores its trials (search.*), so that no "
        "fit and no gate decision reads it; 0: none (no search).",
    )  # fmt: skip
    train_per_class: int | None = Field(
        ge=10, description="Stratified subset: training images per class (null = all)."
    )
    test_per_class: int | None = Field(
        ge=10, description="Stratified subset: test images per class (null = all)."
    )
    expected_train: int | None = Field(
        ge=1, description="Training images the source must hold (null: no check)."
    )
    expected_test: int | None = Field(
        ge=1, description="Test images the source must hold (null: no check)."
    )
    balance_tolerance: float = Field(
        gt=0,
        lt=1,
        description="Each class's share may deviate from 1/K (K classes) by at most this "
        "fraction of it.",
    )
    seed: int = Field(ge=0, description="Seed of the splits and subsets.")

    @model_validator(mode="after")
    def check_format(self) -> IngestParams:
        if self.format == "imagefolder" and self.classes is not None:
            raise ValueError(
                "ingest.classes: imagefolder takes the class names from the folder names; "
                "set ingest.classes to null (rename the folders to rename the classes)"
            )
        if self.format == "idx" and self.test_fraction is not None:
            raise ValueError(
                "ingest.test_fraction: idx files hold their own test split; set it to null"
            )
        return self


class ConvNetArch(Section):
    """squeeze's built-in VGG-style CNN (any channels, image size and number of classes)."""

    name: Literal["convnet"] = Field(description="The built-in architecture.")
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        min_length=1, max_length=4, description="Output channels of each stage (2×2 pool between)."
    )
    convs_per_stage: int = Field(ge=1, le=4, description="3×3 conv blocks per stage.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the classifier.")
    batchnorm: bool = Field(description="BatchNorm after every conv.")


class ClassPathArch(Section):
    """Your own network: an importable class or function (LightningCLI's class_path/init_args
    convention) that builds an nn.Module mapping normalised float (B, C, H, W) to (B, K)
    logits. Only modules the workspace allows ([tool.squeeze] allowed_modules in its
    pyproject.toml, or SQUEEZE_ALLOWED_MODULES) are imported."""

    class_path: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        description="package.module.ClassOrFunction that builds the network.",
    )
    init_args: dict[str, Any] = Field(description="Keyword arguments it is called with.")


def arch_kind(value: Any) -> str:
    """Which arch a params value is: one with a class_path is the user's, else the built-in."""
    data = value if isinstance(value, dict) else vars(value)
    return "ClassPathArch" if "class_path" in data else "ConvNetArch"


# tagged, so an error names the fields of the one arch the value is (not both variants')
ArchParams = Annotated[
    Annotated[ConvNetArch, Tag("ConvNetArch")] | Annotated[ClassPathArch, Tag("ClassPathArch")],
    Discriminator(arch_kind),
]


ARCH_TAGS = {"ConvNetArch", "ClassPathArch"}  # in an error's location, left out of the key


class FitParams(Section):
    """How a model is trained (by train_teacher, distill, prune fine-tuning and merge)."""

    epochs: int = Field(ge=1, le=500, description="Training epochs.")
    batch_size: int = Field(ge=1, le=4096, description="Mini-batch size.")
    lr: float = Field(gt=0, le=10, description="Peak learning rate of the one-cycle schedule.")
    momentum: float = Field(ge=0, lt=1, description="SGD Nesterov momentum.")
    weight_decay: float = Field(ge=0, lt=1, description="L2 weight decay.")
    label_smoothing: float = Field(ge=0, lt=1, description="Label smoothing of the loss.")
    augment: bool = Field(description="Random ±2-pixel shifts and horizontal flips.")
    seed: int = Field(ge=0, description="Seed of initialisation and batch order.")
    threads: int = Field(ge=1, le=256, description="torch CPU threads.")
    device: Literal["auto", "cpu", "cuda"] = Field(description="'auto' uses CUDA when present.")


class TeacherFitParams(FitParams):
    """How the teacher is trained: as FitParams, but 0 epochs (no training) is allowed when the
    teacher starts from a weights file (train_teacher.init)."""

    epochs: int = Field(
        ge=0, le=500, description="Training epochs; 0 with init: evaluate and compress it as is."
    )


class TrainTeacherParams(Section):
    """The teacher: the full-size model every candidate is compressed from."""

    arch: ArchParams
    fit: TeacherFitParams
    init: Location | None = Field(
        description="Start from a teacher you already have: a safetensors file of the arch's "
        "state_dict (a path relative to the workspace, absolute, or s3://bucket/key); null "
        "trains from scratch. A file in the workspace is a dependency of train_teacher (squeeze "
        "sync); for one elsewhere dvc repro sees a change of this key only: give a changed "
        "file a new name, or run `dvc repro -f train_teacher`."
    )
    endpoint_url: Endpoint = Field(
        description="S3 endpoint for an s3:// init (MinIO, moto); null for AWS."
    )

    @model_validator(mode="after")
    def check_epochs(self) -> TrainTeacherParams:
        if self.fit.epochs == 0 and self.init is None:
            raise ValueError(
                "train_teacher.fit.epochs is 0 with no train_teacher.init: 0 epochs only "
                "evaluates and compresses an existing teacher; name its safetensors file in "
                "train_teacher.init, or train at least 1 epoch"
            )
        return self


class EvaluateParams(Section):
    """How every model's ONNX export is timed in onnxruntime (accuracy is measured on all of
    validation and test)."""

    threads: int = Field(ge=1, le=256, description="onnxruntime intra-op threads for latency.")
    warmup: int = Field(ge=0, description="Batch-1 runs discarded before timing.")
    runs: int = Field(ge=10, description="Timed batch-1 runs (median and p95 are reported).")
    rounds: int = Field(
        ge=1, description="Interleaved rounds the runs are split over, every model timed in each."
    )
    throughput_batch: int = Field(ge=1, le=4096, description="Batch size of the throughput test.")

    @model_validator(mode="after")
    def check_rounds(self) -> EvaluateParams:
        if self.rounds > self.runs:
            raise ValueError(f"rounds: {self.rounds} is more than runs ({self.runs}); lower it")
        return self


class DistillParams(Section):
    """A student trained on the upstream model's soft targets (Hinton et al. 2015)."""

    upstream: Name = Field(description="The model distilled from (teacher or another candidate).")
    student: ArchParams
    temperature: float = Field(gt=0, le=100, description="Softmax temperature T of the targets.")
    alpha: float = Field(ge=0, le=1, description="Weight of the soft (T²-scaled) loss.")
    feature_weight: float = Field(
        ge=0, description="Weight of intermediate-feature (pooled embedding) matching; 0 = off."
    )
    fit: FitParams


class PruneParams(Section):
    """Unstructured (global magnitude, AGP schedule) or structured (channel) pruning."""

    upstream: Name = Field(description="The model pruned.")
    kind: Literal["unstructured", "structured"] = Field(description="What is removed.")
    sparsity: float = Field(
        gt=0, lt=1, description="Unstructured: share of weights zeroed; structured: of channels."
    )
    steps: int = Field(ge=1, le=100, description="Pruning steps of the gradual (AGP) schedule.")
    importance: Literal["l1", "l2", "taylor"] = Field(description="Structured: channel criterion.")
    round_to: int | None = Field(
        ge=1, le=512,
        description="Structured: every pruned layer keeps a multiple of this many channels, "
        "rounded down (Torch-Pruning's round_to: 16 channels at sparsity 0.3 keep 8 with 8), "
        "widths the CPU kernels run fast; null: no rounding.",
    )  # fmt: skip
    distill_alpha: float = Field(
        ge=0, le=1, description="Fine-tune with this weight on distillation from the teacher."
    )
    temperature: float = Field(gt=0, le=100, description="Temperature of that distillation.")
    qat: Literal["int8", "int4"] | None = Field(
        description="Fine-tune quantization-aware for a later `quantize` with these weights "
        "(they end on the grid it quantizes to, so quantizing loses ~nothing); null: off."
    )
    fit: FitParams


class QuantizeParams(Section):
    """Post-training quantization of the upstream's ONNX export (onnxruntime)."""

    upstream: Name = Field(description="The model quantized (a float model).")
    mode: Literal["static", "dynamic"] = Field(description="static: calibrated QDQ; dynamic.")
    weights: Literal["int8", "int4"] = Field(
        description="Weight type. int4 (static only) halves the weight bytes again, but "
        "onnxruntime's CPU kernels dequantize it to fp32: smaller, not faster."
    )
    per_channel: bool = Field(description="Per-channel weight scales.")
    calibration_samples: int = Field(ge=1, le=60000, description="Training images to calibrate.")
    fp32_first_layer: bool = Field(
        description="Keep the weight layers the pixels enter first in fp32 (DoReFa-Net and PACT "
        "do so for accuracy). On 1-channel images also for speed: onnxruntime's int8 kernel for "
        "a 1-input-channel conv is slower than its fp32 kernel."
    )

    @model_validator(mode="after")
    def check_weights(self) -> QuantizeParams:
        if self.weights == "int4" and self.mode != "static":
            raise ValueError("weights int4 needs mode static (dynamic quantization is int8 only)")
        return self


class IngredientParams(Section):
    """One soup ingredient: how its fine-tune of the shared starting point differs from the
    others (Wortsman et al. 2022 vary these); batch size, momentum, weight decay, threads and
    device come from the soup's fit."""

    seed: int = Field(ge=0, description="Batch order, augmentation and dropout.")
    lr: float = Field(gt=0, le=10, description="Peak learning rate of the one-cycle schedule.")
    epochs: int = Field(ge=1, le=500, description="Fine-tuning epochs.")
    augment: bool = Field(description="Random shifts and flips while fine-tuning.")
    label_smoothing: float = Field(ge=0, lt=1, description="Of the cross-entropy loss.")


class MergeParams(Section):
    """Model merging: logit ensemble, weight soups, or an ensemble distilled into one student."""

    kind: Literal["ensemble", "soup_uniform", "soup_greedy", "distill_ensemble"] = Field(
        description="ensemble: averaged logits; soup_uniform/soup_greedy: averaged weights of "
        "fine-tuned copies (Wortsman et al. 2022); distill_ensemble: the ensemble distilled."
    )
    upstreams: list[Name] = Field(
        min_length=1,
        description="ensemble/distill_ensemble: the members; soups: the one shared starting point.",
    )
    ingredients: list[IngredientParams] = Field(
        max_length=16,
        description="Soups: the fine-tunes averaged, each with its own seed, lr, epochs, "
        "augmentation and label smoothing; [] for the other kinds.",
    )
    student: ArchParams | None = Field(description="distill_ensemble: the student architecture.")
    temperature: float = Field(gt=0, le=100, description="distill_ensemble: temperature.")
    alpha: float = Field(ge=0, le=1, description="distill_ensemble: weight of the soft loss.")
    fit: FitParams

    @model_validator(mode="after")
    def check_kind(self) -> MergeParams:
        if self.kind == "distill_ensemble" and self.student is None:
            raise ValueError("student: kind distill_ensemble needs a student architecture")
        soup = self.kind.startswith("soup")
        if soup and len(self.ingredients) < 2:
            raise ValueError(
                f"ingredients: kind {self.kind} averages at least 2 fine-tunes, got "
                f"{len(self.ingredients)}; list one entry (seed, lr, epochs, augment, "
                "label_smoothing) per fine-tune"
            )
        if not soup and self.ingredients:
            raise ValueError(f"ingredients: kind {self.kind} fine-tunes none; set ingredients: []")
        if soup and len(self.upstreams) != 1:
            raise ValueError(
                f"upstreams: kind {self.kind} fine-tunes one shared starting point, got "
                f"{self.upstreams}; list one model (or use kind ensemble)"
            )
        return self


Range = Annotated[list[float], Field(min_length=2, max_length=2)]


class StudentsParams(Section):
    """Distilled students of the teacher's own network at a smaller width, searched beside the
    teacher itself: a trial that picks width w < 1 compresses a student w times as wide
    (trained once by distillation from the teacher, Hinton et al. 2015) instead of the teacher;
    its channels are the width's, so it removes none, and the rest of its choice is searched as
    for the teacher's."""

    widths: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        min_length=1,
        description="The width multipliers a trial chooses among; 1: the teacher itself, "
        "compressed from its weights; [1.0]: no student.",
    )  # fmt: skip
    width_arg: str | None = Field(
        description="For a class_path network: its init argument that scales its width (a "
        "number or a list of numbers in train_teacher.arch.init_args, multiplied by the width); "
        "null for the built-in convnet, whose channels are scaled."
    )
    alpha: float = Field(ge=0, le=1, description="Weight of the soft (T²-scaled) loss.")
    temperature: float = Field(gt=0, le=100, description="Softmax temperature T of the targets.")
    fit: FitParams = Field(description="A student's training from scratch, on the train split.")


class SearchParams(Section):
    """The budget search (squeeze.methods.search): what a user can afford, instead of a
    hand-written graph. Trials prune the teacher's channel groups each by its own share (a
    per-layer policy), zero a share of the remaining weights, quantize or not, and fine-tune
    briefly; they are scored on the search split (ingest.
    search_fraction), latency and shipped size measured on their ONNX export. The best
    `finalists` that meet the budget are built in full as candidates search_1..N, beside
    search_uniform (the best of a search over one share for all groups, the baseline a per-layer
    policy is compared with), and go through evaluate, gate and promote like any other."""

    finalists: int = Field(
        ge=0, le=8,
        description="Best trials built in full as candidates search_1..N (plus search_uniform); "
        "0: no search.",
    )  # fmt: skip
    objective: Literal["smallest", "fastest", "most_accurate"] = Field(
        description="What the finalists are ranked by among the trials within the budget: "
        "shipped bytes, batch-1 p50 latency, or accuracy on the search split."
    )
    max_accuracy_drop: float = Field(
        ge=0, le=1,
        description="Accuracy a trial may lose on the search split against the teacher put "
        "through a trial's own short fine-tune uncompressed: absolute (0.01 = 1 point) or "
        "relative (0.01 = 1% of it), as `drop` says. The gate holds the finalists to "
        "gate.max_accuracy_drop against the teacher on validation.",
    )  # fmt: skip
    drop: Literal["absolute", "relative"] = Field(description="How max_accuracy_drop is read.")
    max_latency_ms: float | None = Field(
        gt=0,
        description="Batch-1 p50 latency a trial's export may take in onnxruntime at "
        "evaluate.threads, measured (not estimated); null: no limit.",
    )  # fmt: skip
    max_shipped_bytes: int | None = Field(
        ge=1, description="Shipped (xz) size a trial's export may have; null: no limit."
    )
    trials: int = Field(ge=1, le=10000, description="Trials of the per-layer search.")
    uniform_trials: int = Field(ge=1, le=10000, description="Trials of the uniform baseline.")
    hours: float | None = Field(
        gt=0, description="Wall-clock cap on both searches (hours); null: trials decide."
    )
    parallel: int = Field(
        ge=1, le=64,
        description="Trials asked at once (Optuna's constant liar keeps them apart): their "
        "fine-tunes run side by side on the Dask cluster of a flow whose flow.task_runner is "
        "dask, one after the other elsewhere; the same batches in both, so the same trials.",
    )  # fmt: skip
    seed: int = Field(ge=0, description="Seed of the sampler (Optuna TPE).")
    storage: str | None = Field(
        description="Where the study lives (an SQLAlchemy URL such as "
        "postgresql://user@host/db); null: .squeeze/search.db (SQLite) in the workspace."
    )
    max_sparsity: float = Field(
        gt=0, lt=1, description="The largest share of a channel group's channels a trial removes."
    )
    sparsity_step: float = Field(
        gt=0, lt=1, description="Shares are multiples of this (the grid of every range)."
    )
    sensitivity_limit: float = Field(
        gt=0, le=1,
        description="Sensitivity pass: each group is pruned alone at every share of the grid "
        "(BatchNorm re-estimated, no fine-tune); a share whose accuracy drop on the search "
        "split exceeds this (absolute) ends that group's range.",
    )  # fmt: skip
    importance: Literal["l1", "l2", "taylor"] = Field(description="Channel criterion.")
    round_to: int | None = Field(
        ge=1, le=512, description="Kept widths are multiples of this; null: no rounding."
    )
    distill_alpha: Range = Field(
        description="[low, high] of the searched weight of distillation from the teacher."
    )
    temperature: Range = Field(
        description="[low, high] of the searched temperature of that distillation (log scale)."
    )
    lr: Range = Field(description="[low, high] of the searched peak learning rate (log scale).")
    max_unstructured: float = Field(
        ge=0, lt=1,
        description="The largest share of the remaining weights a trial zeroes after its "
        "channels (global L1 magnitude, so each layer's share follows from the ranking), on the "
        "grid of sparsity_step; 0: no unstructured pruning.",
    )  # fmt: skip
    weights: list[Literal["fp32", "int8", "int4"]] = Field(
        min_length=1,
        description="The weight types a trial chooses among: fp32 (no quantization) or int8 / "
        "int4 weights by onnxruntime's static quantization (per-channel, calibrated uint8 "
        "activations; squeeze.methods.quantize).",
    )  # fmt: skip
    qat: list[bool] = Field(
        min_length=1,
        description="Whether a quantized trial's fine-tune is quantization-aware "
        "(squeeze.methods.qat), among these choices.",
    )  # fmt: skip
    fp32_first_layer: list[bool] = Field(
        min_length=1,
        description="Whether a quantized trial keeps the weight layers the pixels enter first "
        "in fp32, among these choices.",
    )  # fmt: skip
    fp32_layers: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        description="[low, high] of how many weight layers a quantized trial keeps fp32 (mixed "
        "precision): the ones whose quantization alone costs most accuracy on the search split "
        "(the weight-sensitivity pass); [0, 0]: none beyond fp32_first_layer's. A count above "
        "the network's weight layers means all of them."
    )
    calibration_samples: int = Field(
        ge=1, le=60000, description="Training images that calibrate a quantized trial or finalist."
    )
    trial_images: int = Field(
        ge=10, description="Training images a trial fine-tunes on (a seeded stratified subset)."
    )
    trial_fit: FitParams = Field(description="A trial's short fine-tune (lr is searched).")
    rescore: int = Field(
        ge=0, le=1000,
        description="Per-layer trials fine-tuned again, for rescore_epochs, before the finalists "
        "are chosen (successive halving's second rung): those past the accuracy floor that the "
        "finalists would be chosen from first. 0: none.",
    )  # fmt: skip
    rescore_epochs: int = Field(
        ge=1, le=1000, description="Epochs of a rescored trial's fine-tune (trial_fit otherwise)."
    )
    steps: int = Field(ge=1, le=100, description="A finalist's pruning steps.")
    fit: FitParams = Field(
        description="A finalist's fine-tune in full, at its own lr (a trial's lr is searched "
        "for its short fine-tune only): fit.epochs for its channel pass."
    )
    zeroing_epochs: int = Field(
        ge=1, le=1000,
        description="Epochs of a finalist's zeroing pass (its unstructured sparsity, after the "
        "channel pass; the rest of its fine-tune as fit).",
    )  # fmt: skip
    students: StudentsParams

    @model_validator(mode="after")
    def check_ranges(self) -> SearchParams:
        for key, floor, ceiling in (("distill_alpha", 0, 1), ("lr", None, 10),
                                    ("temperature", None, 100)):  # fmt: skip
            low, high = getattr(self, key)
            floor_ok = low >= floor if floor is not None else low > 0
            if not (floor_ok and low <= high <= ceiling):
                bound = f"{floor} <=" if floor is not None else "0 <"
                raise ValueError(f"{key}: [{low}, {high}] is no range; give [low, high] with "
                                 f"{bound} low <= high <= {ceiling}")  # fmt: skip
        low, high = self.fp32_layers
        if not 0 <= low <= high:
            raise ValueError(f"fp32_layers: [{low}, {high}] is no range; give [low, high] with "
                             "0 <= low <= high (a count of weight layers)")  # fmt: skip
        if self.sparsity_step > self.max_sparsity:
            raise ValueError(f"sparsity_step {self.sparsity_step} is above max_sparsity "
                             f"{self.max_sparsity}: the grid would hold no share")  # fmt: skip
        if self.finalists > self.trials:
            raise ValueError(f"finalists: {self.finalists} is more than trials ({self.trials})")
        return self


class GateParams(Section):
    """Thresholds every candidate must pass before it may be promoted, and the statistics of
    champion vs challenger. Every gate reads the validation split; accuracies and drops are
    fractions (0.015 = 1.5 absolute points), never relative."""

    min_accuracy: float = Field(ge=0, le=1, description="Minimum validation accuracy.")
    max_accuracy_drop: float = Field(
        ge=0, le=1,
        description="Non-inferiority margin vs the teacher (absolute, 0.015 = 1.5 points): the "
        "one-sided (1 - alpha) paired bootstrap bound of teacher minus candidate validation "
        "accuracy must not exceed it.",
    )  # fmt: skip
    max_class_drop: float = Field(
        ge=0, le=1, description="Maximum per-class validation accuracy drop vs the teacher."
    )
    max_size_bytes: int = Field(ge=1, description="Maximum shipped file size (model.onnx.xz).")
    max_latency_ms: float = Field(gt=0, description="Maximum batch-1 median latency.")
    min_agreement: float = Field(
        ge=0, le=1, description="Minimum agreement of an export with its source on validation."
    )
    policy: Literal["smallest", "fastest", "most_accurate"] = Field(
        description="Which passing candidate is the challenger."
    )
    alpha: float = Field(
        gt=0, lt=0.5,
        description="Significance level of every paired test (McNemar exact; one-sided "
        "non-inferiority bounds at 1 - alpha).",
    )  # fmt: skip
    noninferiority_margin: float = Field(
        ge=0, le=1,
        description="A smaller/faster challenger replaces the champion only if its validation "
        "accuracy is non-inferior within this margin (absolute, 0.005 = 0.5 points).",
    )  # fmt: skip
    multiplicity: Literal["none", "holm", "bonferroni"] = Field(
        description="How the non-inferiority-to-the-teacher tests of all candidates share alpha. "
        "none: each candidate at alpha (a per-candidate guarantee only; the selected model is "
        "one of many tested); holm (step-down) or bonferroni (alpha / number of candidates): "
        "the chance that any candidate more than max_accuracy_drop worse than the teacher "
        "passes is at most alpha, so the selected challenger carries it too.",
    )
    latency_margin: float = Field(
        ge=0, lt=1,
        description="Policy fastest: a challenger beats the champion on latency only if its p50 "
        "is below the champion's × (1 - latency_margin) (relative, 0.05 = more than 5% faster): "
        "the medians of two timings differ by noise alone. 0 = any lower median.",
    )  # fmt: skip


class PromoteParams(Section):
    """The model registry the gated challenger is published to."""

    registry: Location = Field(description="Registry root: a local folder or s3://bucket/prefix.")
    endpoint_url: Endpoint = Field(description="S3 endpoint (MinIO, moto); null for AWS.")
    family: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Model family name: one input contract (shape, dtype, layout, classes) for "
        "all its versions. Data of another shape or classes needs its own family: train_teacher "
        "and promote refuse data that production of this family does not fit.",
    )


class FlowParams(Section):
    """How the Prefect flow runs: where the candidate fan-out executes and when it is scheduled."""

    task_runner: Literal["threads", "dask"] = Field(
        description="threads: a local thread pool; dask: a Dask cluster (prefect-dask), whose "
        "workers get inputs from and send models to the default DVC remote (dvc remote add -d)."
    )
    workers: int = Field(ge=1, le=256, description="Concurrent candidate builds (threads/workers).")
    dask_address: str | None = Field(
        description="dask: scheduler address of an existing cluster (tcp://host:8786); its workers "
        "need the project installed and the remote's credentials, and the flow's PREFECT_API_URL "
        "(which Prefect sends them) must be reachable from them. null starts a LocalCluster of "
        "`workers` processes."
    )
    cron: str = Field(
        pattern=r"^\S+(\s+\S+){4}$", description="Schedule of `squeeze serve` (cron, 5 fields)."
    )
    timezone: str = Field(description="Time zone of the cron schedule (IANA, e.g. UTC).")

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as UTC") from None
        return value
