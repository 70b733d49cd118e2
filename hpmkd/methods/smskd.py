"""SMSKD (Tian, Huang, Tang, Yao, arXiv 2601.15657; METHODS.md section 3).

Training is split into stages, each with one method. Stage 1: ``L_1 + lambda_c * CE``. At the
start of stage m >= 2 the student is copied and frozen as the reference model f_R, and
``L = L_m + lambda_c * CE + lambda_r * L_AdaRef`` with
``L_AdaRef = mean_i w_i * tau^2 * KL(p_R(x_i) || p_S(x_i))`` (tempered, reference first) and
``w_i`` the teacher's true-class probability ``p_T(y_i | x_i)``, detached.

Switches (the paper's ablations): ``weight`` = ``teacher_tcp`` (default) | ``one_minus_teacher_tcp``
| ``reference_tcp`` | ``none``; ``reference: false`` drops the reference loss. The reference lives
in the method's state (buffers and frozen weights), so a checkpoint taken in stage m resumes in
stage m with the same reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import DistillMethod, ModelOutputs
from hpmkd.methods.composite import Composite
from hpmkd.methods.functional import cross_entropy, tempered_kl_per_sample

WEIGHTS = ("teacher_tcp", "one_minus_teacher_tcp", "reference_tcp", "none")


class SMSKD(Composite):
    name = "smskd"

    def __init__(
        self,
        stages: Sequence[DistillMethod],
        starts: Sequence[int],
        student: nn.Module,
        *,
        lambda_c: float = 1.0,
        lambda_r: float = 0.5,
        tau: float = 4.0,
        weight: str = "teacher_tcp",
        reference: bool = True,
    ) -> None:
        super().__init__(stages, extra_student_features=("input",))
        starts = [int(s) for s in starts]
        if len(starts) != len(stages) or starts[0] != 0 or starts != sorted(set(starts)):
            raise UserError(
                f"smskd: stage starts must be 0 then strictly increasing epochs, one per stage; "
                f"got {starts} for {len(stages)} stages"
            )
        if weight not in WEIGHTS:
            raise UserError(f"smskd: unknown weight '{weight}'; valid: {', '.join(WEIGHTS)}")
        self.starts = starts
        self.lambda_c, self.lambda_r, self.tau = lambda_c, lambda_r, tau
        self.weight = weight
        self.use_reference = reference
        # a frozen copy of the student's architecture; its weights are set at each transition
        self.reference = _frozen_copy(student)
        self.register_buffer("reference_stage", torch.tensor(0))
        self._metrics: dict[str, Tensor] = {}

    def stage_at(self, epoch: int) -> int:
        """0-based index of the stage that trains at ``epoch``."""
        return sum(1 for start in self.starts[1:] if epoch >= start)

    @property
    def stage(self) -> int:
        return self.stage_at(self.epoch)

    def on_epoch_start(self, student: nn.Module) -> None:
        super().on_epoch_start(student)
        stage = self.stage
        if stage > 0 and int(self.reference_stage) < stage:
            self.reference.load_state_dict(student.state_dict())
            self.reference_stage.fill_(stage)

    def train(self, mode: bool = True) -> SMSKD:
        super().train(mode)
        self.reference.eval()  # frozen: BatchNorm statistics and dropout stay as copied
        return self

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.children_methods.parameters())

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        assert teacher is not None
        stage = self.stage
        active = self.children_methods[stage]
        own_terms = active(student, teacher, labels, index)
        terms = {f"{active.name}/{k}": v for k, v in own_terms.items()}
        terms["ce"] = self.lambda_c * cross_entropy(student.logits, labels)
        self._metrics = {"stage": torch.tensor(float(stage + 1))}
        if stage > 0 and self.use_reference:
            with torch.no_grad():
                reference_logits = self.reference(student.features["input"])
            weights = self.sample_weights(teacher.logits, reference_logits, labels)
            kl = tempered_kl_per_sample(student.logits, reference_logits, self.tau)
            terms["adaref"] = self.lambda_r * (weights * kl).mean()
            self._metrics["tcp_weight"] = weights.mean()
        return terms

    def sample_weights(
        self, teacher_logits: Tensor, reference_logits: Tensor, labels: Tensor
    ) -> Tensor:
        """Per-sample weights w_i of the reference loss, detached."""
        if self.weight == "none":
            return torch.ones_like(labels, dtype=torch.float32)
        source = reference_logits if self.weight == "reference_tcp" else teacher_logits
        tcp = F.softmax(source.detach().float(), dim=1).gather(1, labels[:, None]).squeeze(1)
        return 1.0 - tcp if self.weight == "one_minus_teacher_tcp" else tcp

    def step_metrics(self) -> dict[str, Tensor]:
        return self._metrics


def _frozen_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)
