"""Attention-weighted multi-teacher distillation (AWMT, the ensemble of HPM-KD; METHODS.md 2.3).

The teacher is a ``TeacherEnsemble`` of K teachers; the method reads their stacked logits
``z`` (feature ``teacher_logits``, ``(B, K, C)``). Per-sample weights ``a(x)`` on the simplex mix
the teachers into one target ``p(x)``, and
``L = alpha * T^2 * KL(p || softmax(z_s / T)) + (1 - alpha) * CE - beta * mean_i H(a(x_i))``.

Decisions, each a constructor argument or stated here:

- ``weighting``: ``attention`` (``a = softmax(MLP(input))``, MLP ``Linear -> ReLU -> Linear``
  of width ``hidden``) or ``uniform`` (``a_k = 1/K`` exactly, no parameters: the ablation
  baseline, with no entropy term and nothing for ``attention_training`` to train).
- ``mixing``: ``probs`` (``p = sum_k a_k softmax(z_k / T)``, the paper's) or ``logits``
  (``p = softmax(sum_k a_k z_k / T)``). Both are formed in log space (a log-sum-exp over the
  teachers for ``probs``), so the KL stays finite where probabilities underflow to 0.
- ``attention_input``: ``teacher_probs``, the concatenated ``softmax(z_k)`` at T = 1, or
  ``teacher_probs_and_student``, with the student's ``softmax(z_s)`` at T = 1 appended; both
  detached, so the attention network never trains the student directly.
- ``attention_training``: ``joint`` (the paper's reading) trains the attention network by the
  student's loss: the KD term's gradient reaches it through the target. Left alone this pulls
  the target towards the student; the entropy term (beta) keeps the weights from collapsing.
  ``ensemble_ce`` trains it only on the ensemble's own prediction: the extra term
  ``ensemble_ce`` is the cross-entropy on the labels of the ensemble mixed by the same rule at
  T = 1 (its accuracy is the ensemble's), with weight 1; the student's KD target then uses
  detached weights. The entropy term regularises the weights in both modes.
- All loss math is fp32. ``step_metrics`` logs the batch means ``teacher_weight_<k>`` of
  ``a_k`` and ``attention_entropy`` (``log K`` is uniform, 0 is collapse onto one teacher);
  ``split_weights`` summarises ``a_k`` over a split after training (per-sample diversity).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import DistillMethod, MethodSetup, ModelOutputs, register_method
from hpmkd.methods.functional import cross_entropy
from hpmkd.models import FeatureTap

FEATURE = "teacher_logits"
WEIGHTINGS = ("attention", "uniform")
MIXINGS = ("probs", "logits")
ATTENTION_INPUTS = ("teacher_probs", "teacher_probs_and_student")
ATTENTION_TRAININGS = ("joint", "ensemble_ce")


def ensemble_log_probs(
    teacher_logits: Tensor, weights: Tensor, log_weights: Tensor, temperature: float, mixing: str
) -> Tensor:
    """Log of the mixed target, ``(B, C)``, from logits ``(B, K, C)`` and weights ``(B, K)``
    (given with their logs, exact where a weight underflows to 0)."""
    z = teacher_logits.float()
    if mixing == "probs":
        log_p = F.log_softmax(z / temperature, dim=2)
        return torch.logsumexp(log_weights[:, :, None] + log_p, dim=1)
    mixed = (weights[:, :, None] * z).sum(dim=1)
    return F.log_softmax(mixed / temperature, dim=1)


def kl_to_student(target_log_probs: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(p || softmax(z_s / T))`` summed over classes, averaged over the batch."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_q, target_log_probs, reduction="none", log_target=True).sum(dim=1)
    return kl.mean() * temperature**2


def _choice(arg: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise UserError(
            f"method 'multi_teacher': unknown {arg} '{value}'; valid: {', '.join(valid)}"
        )
    return value


@register_method
class MultiTeacher(DistillMethod):
    name = "multi_teacher"

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.9,
        beta: float = 0.1,
        weighting: str = "attention",
        mixing: str = "probs",
        attention_input: str = "teacher_probs",
        attention_training: str = "joint",
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise UserError(f"method 'multi_teacher' needs temperature > 0; got {temperature}")
        if not 0 <= alpha <= 1 or not beta >= 0:
            raise UserError(
                f"method 'multi_teacher' needs 0 <= alpha <= 1 and beta >= 0; "
                f"got alpha {alpha}, beta {beta}"
            )
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise UserError(f"method 'multi_teacher' needs hidden >= 1; got {hidden!r}")
        self.temperature = temperature
        self.alpha = alpha
        self.beta = beta
        self.weighting = _choice("weighting", weighting, WEIGHTINGS)
        self.mixing = _choice("mixing", mixing, MIXINGS)
        self.attention_input = _choice("attention_input", attention_input, ATTENTION_INPUTS)
        self.attention_training = _choice(
            "attention_training", attention_training, ATTENTION_TRAININGS
        )
        self.hidden = hidden
        self.teacher_features = (FEATURE,)
        self.attention: nn.Module | None = None
        self._metrics: dict[str, Tensor] = {}

    def bind_features(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is not None and FEATURE not in getattr(teacher, "feature_points", {}):
            label = getattr(teacher, "model_name", type(teacher).__name__)
            raise UserError(
                f"method 'multi_teacher' needs a teacher ensemble (TeacherEnsemble); "
                f"the teacher '{label}' is a single model"
            )
        super().bind_features(student, teacher)

    def setup(self, info: MethodSetup) -> None:
        shape = info.teacher_shapes.get(FEATURE)
        if shape is None or len(shape) != 3:
            raise UserError(
                "method 'multi_teacher' needs a teacher ensemble (feature "
                f"'{FEATURE}' of shape (batch, teachers, classes)); got {shape}"
            )
        k, c = shape[1], shape[2]
        if self.weighting == "uniform":
            self.attention = None
            return
        inputs = k * c + (c if self.attention_input == "teacher_probs_and_student" else 0)
        self.attention = nn.Sequential(
            nn.Linear(inputs, self.hidden), nn.ReLU(), nn.Linear(self.hidden, k)
        )

    def weights(self, teacher_logits: Tensor, student_logits: Tensor) -> tuple[Tensor, Tensor]:
        """``a(x)`` and ``log a(x)``, each ``(B, K)``: the attention network's, or ``1/K``."""
        b, k, _ = teacher_logits.shape
        if self.weighting == "uniform":
            a = torch.full((b, k), 1.0 / k, device=teacher_logits.device)
            return a, a.log()
        if self.attention is None:
            raise RuntimeError("method 'multi_teacher': setup() must run before the first forward")
        inputs = F.softmax(teacher_logits.float(), dim=2).flatten(1)
        if self.attention_input == "teacher_probs_and_student":
            inputs = torch.cat([inputs, F.softmax(student_logits.float(), dim=1)], dim=1)
        log_a = F.log_softmax(self.attention(inputs.detach()).float(), dim=1)
        return log_a.exp(), log_a

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        assert teacher is not None
        z_t = teacher.features[FEATURE]
        a, log_a = self.weights(z_t, student.logits)
        entropy = -(a * log_a).sum(dim=1)
        self._metrics = {f"teacher_weight_{k}": w for k, w in enumerate(a.detach().mean(dim=0))}
        self._metrics["attention_entropy"] = entropy.detach().mean()

        separate = self.attention_training == "ensemble_ce"
        mix = (a.detach(), log_a.detach()) if separate else (a, log_a)
        target = ensemble_log_probs(z_t, *mix, self.temperature, self.mixing)
        terms = {
            "ce": (1 - self.alpha) * cross_entropy(student.logits, labels),
            "kd": self.alpha * kl_to_student(target, student.logits, self.temperature),
        }
        if self.weighting == "attention":
            terms["entropy"] = -self.beta * entropy.mean()
            if separate:
                ensemble = ensemble_log_probs(z_t, a, log_a, 1.0, self.mixing)
                terms["ensemble_ce"] = F.nll_loss(ensemble, labels)
        return terms

    def step_metrics(self) -> dict[str, Tensor]:
        return dict(self._metrics)

    @torch.no_grad()
    def weight_summary(self, teacher_logits: Tensor, student_logits: Tensor) -> dict[str, list]:
        """Each teacher's weight ``a_k(x)`` over samples: mean, standard deviation and the share
        of samples where it is the largest (whether the attention picks per sample)."""
        a, _ = self.weights(teacher_logits, student_logits)
        top = torch.bincount(a.argmax(dim=1), minlength=a.shape[1]).float() / len(a)
        return {"mean": a.mean(0).tolist(), "std": a.std(0).tolist(), "top_share": top.tolist()}


@torch.no_grad()
def split_weights(
    method: MultiTeacher,
    ensemble: nn.Module,
    student: nn.Module,
    x: Tensor,
    transform: Callable[..., Tensor],
    batch_size: int = 1024,
) -> dict[str, list]:
    """``method.weight_summary`` over the rows ``x`` of a split (teachers and student in eval)."""
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    teacher_logits, student_logits = [], []
    with FeatureTap(ensemble, (FEATURE,)) as tap:
        for start in range(0, len(x), batch_size):
            xb = transform(x[start : start + batch_size].to(device), train=False)
            ensemble(xb)
            teacher_logits.append(tap.features[FEATURE].float())
            student_logits.append(student(xb).float())
    student.train(was_training)
    method.to(device)
    return method.weight_summary(torch.cat(teacher_logits), torch.cat(student_logits))
