"""The budget search's distilled students (squeeze.methods.students): the teacher's network at a
smaller width, for the built-in convnet and a class_path network, refused with the key to fix
where no width can be scaled; and trained alike wherever it is trained."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from squeeze.config.sections import SearchParams
from squeeze.data.spec import Split
from squeeze.methods.students import StudentError, distilled_student, student_arch
from squeeze.nets.models import Classifier
from tests.unit.conftest import TINY_ARCH
from tests.unit.test_search import search_params

USER = {"class_path": "nets.Tiny", "init_args": {"in_channels": 1, "num_classes": 10}}


def with_students(**students: Any) -> SearchParams:
    cfg = search_params()
    return cfg.model_copy(update={"students": cfg.students.model_copy(update=students)})


def test_a_student_scales_the_convnet_channels_or_the_named_init_argument() -> None:
    convnet = {**TINY_ARCH, "channels": [8, 16, 24]}
    assert student_arch(convnet, 0.5, with_students())["channels"] == [4, 8, 12]
    rounded = with_students().model_copy(update={"round_to": 8})
    assert student_arch(convnet, 0.5, rounded)["channels"] == [8, 8, 16]  # multiples, >= 8
    assert student_arch(convnet, 0.01, with_students())["channels"] == [1, 1, 1]
    user = with_students(width_arg="width")
    as_int = {**USER, "init_args": USER["init_args"] | {"width": 16}}
    assert student_arch(as_int, 0.25, user)["init_args"] == as_int["init_args"] | {"width": 4}
    as_float = {**USER, "init_args": USER["init_args"] | {"width": 2.0}}
    assert student_arch(as_float, 0.25, user)["init_args"]["width"] == 0.5
    assert as_float["init_args"]["width"] == 2.0  # the teacher's record is left as it was
    per_stage = {**USER, "init_args": USER["init_args"] | {"widths": [16, 32, 64]}}
    stages = with_students(width_arg="widths").model_copy(update={"round_to": 8})
    assert student_arch(per_stage, 0.3, stages)["init_args"]["widths"] == [8, 8, 16]


@pytest.mark.parametrize(
    ("arch", "width_arg", "says"),
    [
        (USER, None, "is None"),
        (USER, "width", "give no number (or list of numbers) for 'width'"),
        ({**USER, "init_args": USER["init_args"] | {"width": True}}, "width", "no number"),
        ({**USER, "init_args": USER["init_args"] | {"width": []}}, "width", "no number"),
        (TINY_ARCH, "width", "the built-in convnet, whose channels a width scales: set it to null"),
    ],
)
def test_a_width_that_cannot_be_scaled_is_refused_naming_the_key(
    arch: dict, width_arg: str | None, says: str
) -> None:
    with pytest.raises(StudentError, match="search.students.width_arg") as err:
        student_arch(arch, 0.5, with_students(width_arg=width_arg))
    assert says in str(err.value)


def test_a_student_is_trained_alike_whichever_split_draws_its_curve(
    tiny_trained: Classifier, small_fmnist: dict[str, Split]
) -> None:
    """The search trains a student with the search split as its curve, a finalist with the
    validation split: the same weights, half the teacher's channels, distilled from it."""
    cfg = with_students()
    train = small_fmnist["train"]
    built = [distilled_student(tiny_trained, 0.5, cfg, train, small_fmnist[curve])
             for curve in ("val", "test")]  # fmt: skip
    first, second = (model.state_dict() for model in built)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert built[0].net.features[0].out_channels == tiny_trained.net.features[0].out_channels // 2
    assert not built[0].training
