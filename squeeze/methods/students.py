"""The budget search's distilled students: the teacher's own network at a smaller width, trained
from scratch on the teacher's soft targets (Hinton et al. 2015, squeeze.methods.distill), which
a trial may compress instead of the teacher (params `search.students`).

A width multiplier scales every hidden width at once, as MobileNets' α does (Howard et al.
2017): the built-in convnet's `channels`, or the number a user's class_path network takes as the
init argument `search.students.width_arg`. The search trains each width's student once; a
finalist built from it trains it again with the same params and data, in the same way, so both
start from the same weights.
"""

from __future__ import annotations

from typing import Any

import torch

from squeeze.config.params import width_problem
from squeeze.config.sections import SearchParams
from squeeze.data.spec import Split
from squeeze.errors import StageRefused
from squeeze.methods.distill import train_student
from squeeze.nets.models import Classifier


class StudentError(StageRefused):
    """search.students cannot scale the teacher's network: the message names the key."""


def scaled(value: Any, width: float, round_to: int | None) -> Any:
    """value × width, for a value squeeze.config.params.is_width accepts: an int stays an int
    of at least 1 (a multiple of round_to where set, at least round_to), a float stays a float,
    a list is scaled item by item."""
    if isinstance(value, list):
        return [scaled(v, width, round_to) for v in value]
    if isinstance(value, float):
        return value * width
    step = round_to or 1
    return max(step, round(value * width / step) * step)


def student_arch(arch: dict[str, Any], width: float, cfg: SearchParams) -> dict[str, Any]:
    """The arch record of the teacher's network `width` times as wide (0 < width <= 1): the
    built-in convnet's `channels` each scaled, or a class_path network's init argument
    cfg.students.width_arg (a number, or a list of numbers such as per-stage widths: scaled),
    an int kept a multiple of cfg.round_to where set.

    Raises:
        StudentError: a class_path network and no width_arg, or init_args that give no number
            for it; or the built-in convnet and a width_arg (naming the key and what to write).
    """
    problem = width_problem(arch, cfg.students.width_arg)
    if problem:
        raise StudentError(f"params.yaml {problem}")
    if "class_path" not in arch:
        return arch | {"channels": scaled(arch["channels"], width, cfg.round_to)}
    name = cfg.students.width_arg
    value = arch["init_args"][name]
    return arch | {"init_args": arch["init_args"] | {name: scaled(value, width, cfg.round_to)}}


def distilled_student(
    teacher: Classifier, width: float, cfg: SearchParams, train: Split, val: Split
) -> Classifier:
    """The student of `width` (student_arch) trained from scratch on `train` with
    cfg.students.fit, distilled from the teacher at cfg.students' alpha and temperature
    (squeeze.methods.distill.train_student), at cfg.students.fit.threads: the same params and
    train split give the same weights in every process. val only draws its curve (never read
    for a choice). Returns the student ((B, H, W, C) uint8 -> (B, K) logits) in eval mode.

    Raises:
        StudentError: as student_arch.
    """
    students = cfg.students
    torch.set_num_threads(students.fit.threads)
    arch = student_arch(teacher.arch, width, cfg)
    student, _ = train_student(teacher, arch, students.fit, students.temperature, students.alpha,
                               0.0, train, val)  # fmt: skip
    return student
