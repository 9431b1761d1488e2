"""Distillation losses between a student's and a teacher's features or logits, and the layer spec that picks one.

* ``mse`` / ``cosine``: feature matching, after a 1x1 adapter from student to teacher channels (FitNets; Romero et
  al. 2015); the student map is pooled (larger) or bilinearly interpolated (smaller) to the teacher's size.
* ``attention``: attention transfer (Zagoruyko & Komodakis 2017): the channel-mean of squared activations, flattened
  and L2-normalised, compared by squared distance (no adapter needed: channels may differ).
* ``probe_kl``: a linear probe on the globally pooled features of each network; ``T^2 * KL(teacher || student)`` of
  their class distributions at temperature ``T`` (the teacher's probe is fitted once and frozen).
* logits: Hinton et al.'s knowledge distillation, ``T^2 * KL(softmax(t/T) || softmax(s/T))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medrobust.utilities.errors import InputError

LOSSES = ("mse", "cosine", "attention", "probe_kl")
_KEYS = {"student", "teacher", "weight", "loss", "adapter", "name"}


@dataclass(frozen=True)
class DistillLayer:
    """One distilled layer pair.

    Attributes:
        student: the student's tap name (``layer3``, ``stages.2``, a module path).
        teacher: the teacher's tap name; default the student's.
        weight: the term's weight.
        loss: one of :data:`LOSSES`.
        adapter: a trainable 1x1 convolution from student to teacher channels (``mse``, ``cosine``).
        name: the term's name in ``train/loss/distill/<name>``; default the student's tap name.
    """

    student: str
    teacher: str
    weight: float = 1.0
    loss: str = "probe_kl"
    adapter: bool = True
    name: str = ""

    @classmethod
    def parse(cls, spec: dict[str, Any] | str) -> DistillLayer:
        """From a YAML entry ``{student: layer3, teacher: layer3, weight: 1.0, loss: mse}`` or a bare tap name."""
        if isinstance(spec, str):
            spec = {"student": spec}
        unknown = set(spec) - _KEYS
        if unknown or "student" not in spec:
            raise InputError(f"Distillation layer {spec}: keys are {sorted(_KEYS)}, 'student' required")
        loss = spec.get("loss", "probe_kl")
        if loss not in LOSSES:
            raise InputError(f"Distillation loss {loss!r} unknown; valid: {', '.join(LOSSES)}")
        weight = float(spec.get("weight", 1.0))
        if weight < 0:
            raise InputError(f"Distillation weight must be >= 0, got {weight}")
        student = str(spec["student"])
        name = str(spec.get("name") or student)
        return cls(student, str(spec.get("teacher") or student), weight, loss, bool(spec.get("adapter", True)), name)


def match_spatial(student: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a ``(B, C, H, W)`` map to ``size``: average pooling when it is larger, bilinear when smaller."""
    if tuple(student.shape[-2:]) == tuple(size):
        return student
    if student.shape[-2] >= size[0] and student.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(student, size)
    return F.interpolate(student, size=size, mode="bilinear", align_corners=False)


def feature_matching(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """``mse``: mean squared error; ``cosine``: 1 - cosine similarity over channels, averaged over positions."""
    student = match_spatial(student, teacher.shape[-2:])
    if student.shape[1] != teacher.shape[1]:
        raise InputError(
            f"Feature matching needs equal channels, got student {student.shape[1]} vs teacher {teacher.shape[1]}; "
            "set adapter: true (a 1x1 convolution maps them)"
        )
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def attention_map(feature: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko's spatial attention: mean over channels of the squared map, at ``size``, flattened, L2-normalised."""
    attention = feature.pow(2).mean(1, keepdim=True)
    if size is not None:
        attention = match_spatial(attention, size)
    return F.normalize(attention.flatten(1), dim=1)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    size = tuple(teacher.shape[-2:])
    return (attention_map(student, size) - attention_map(teacher)).pow(2).sum(1).mean()


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch (Hinton et al. 2015)."""
    t = temperature
    log_student = F.log_softmax(student_logits / t, dim=1)
    return F.kl_div(log_student, F.softmax(teacher_logits / t, dim=1), reduction="batchmean") * t * t
