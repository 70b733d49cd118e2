"""Contrastive representation distillation (Tian, Krishnan & Isola 2020, "Contrastive
Representation Distillation", ICLR).

Linear heads embed the student's and the teacher's ``pool`` vectors into ``feat_dim`` (128)
dimensions, L2-normalised: ``v_s``, ``v_t``. Two memory banks of ``num_train x feat_dim``
(registered buffers) hold a momentum average of every training sample's student and teacher
embedding. For each anchor, column 0 of its contrast set is its own index (the positive) and
``K`` = ``num_negatives`` (16384) more indices are drawn as negatives. With scores
``P = exp(v . m / T) / Z`` (``T`` = 0.07, ``m`` a bank row, ``Z`` the uniform-noise
normalisation constant, estimated once on the first batch as ``mean(exp(v . m / T)) *
num_train``), the NCE loss of one side is
``-(sum_i log h(P_i0) + sum_ij log(1 - h(P_ij))) / batch``, ``h(P) = P / (P + K / num_train)``,
written here with log-sigmoids of ``log P - log(K / num_train)`` (no epsilon needed). The
student anchor is scored against the teacher bank and the teacher anchor against the student
bank; the two sides are summed:
``ce_weight * CE + beta * (L_s + L_t)`` (+ ``kd_weight`` * KD when non-zero).

After the loss, the banks are updated with the batch (no gradient):
``bank[i] <- normalise(momentum * bank[i] + (1 - momentum) * v_i)``, momentum 0.5. Under
``torch.distributed`` the batch's embeddings, indices and labels are first all-gathered from
every rank, so every rank applies the same update and the banks stay identical; the first-batch
``Z`` is averaged over the ranks for the same reason.

Decisions, each a constructor argument or stated here:

- Weights (CRD benchmark script ``run_cifar_distill.sh``, ``-r 1 -a 0 -b 0.8``): CE 1, KL 0,
  beta 0.8; ``kd_weight`` 1 gives the script's "CRD+KD" row.
- Negatives (``negatives``): ``other_class`` (default) follows the benchmark's data loader
  (``CIFAR100InstanceSample``, mode ``exact``), which draws negatives only among samples of
  other classes. The method is not given the training labels, so it records the label of every
  index it sees in a buffer; until a sample has been seen once (the first epoch) it may be drawn
  as a negative of its own class. ``uniform`` draws from all other samples (the paper's memory
  module without class information). Neither draws the anchor itself; ``K`` is clipped to
  ``num_train - 1``. Draws use torch's global generator, so a fixed seed gives the same
  negatives.
- Replacement (``negatives_replacement``): true (default) draws each row's ``K`` negatives
  independently, with replacement (on CIFAR-100, about 2,400 of a row's 16,384 are repeats);
  false draws them without replacement, as the benchmark's loader does (``np.random.choice``
  with ``replace=False`` unless ``K`` exceeds the row's candidates; then it, and this, draw
  that row with replacement). ``fidelity=repdistiller`` (the CRD presets) sets false.
- Banks start uniform in ``[-1/sqrt(feat_dim/3), 1/sqrt(feat_dim/3)]`` as the reference. A
  sample index that occurs several times in one (gathered) batch is updated once, with its
  first occurrence.
- Features are flattened when not 2-D (any rank works).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import DistillMethod, MethodSetup, ModelOutputs, register_method
from hpmkd.methods.feature_math import feature_specs
from hpmkd.methods.functional import cross_entropy, tempered_kl

log = logging.getLogger("hpmkd")

NEGATIVES = ("other_class", "uniform")


def nce_loss(scores: Tensor, log_z: Tensor, num_train: int) -> Tensor:
    """NCE loss of one side: ``scores`` (B, 1 + K) are ``v . m / T``, positive in column 0."""
    num_negatives = scores.shape[1] - 1
    logits = scores - log_z - math.log(num_negatives / num_train)
    positive = F.logsigmoid(logits[:, 0]).sum()
    negative = F.logsigmoid(-logits[:, 1:]).sum()
    return -(positive + negative) / scores.shape[0]


def momentum_update(rows: Tensor, new: Tensor, momentum: float) -> Tensor:
    """``normalise(momentum * rows + (1 - momentum) * new)`` row by row."""
    return F.normalize(rows * momentum + new * (1.0 - momentum), dim=1)


def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor's rows from every rank (rank order); batch sizes may differ."""
    world = dist.get_world_size()
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    gathered = []
    for t in tensors:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]))
    return tuple(gathered)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@register_method
class CRD(DistillMethod):
    name = "crd"

    def __init__(
        self,
        student_features: Sequence[str] | str = ("pool",),
        teacher_features: Sequence[str] | str = ("pool",),
        feat_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        negatives: str = "other_class",
        negatives_replacement: bool = True,
        beta: float = 0.8,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        self.student_features = feature_specs(student_features, self.name, "student_features")
        self.teacher_features = feature_specs(teacher_features, self.name, "teacher_features")
        if negatives not in NEGATIVES:
            raise UserError(
                f"method 'crd': negatives must be one of {NEGATIVES}; got {negatives!r}"
            )
        if int(feat_dim) < 1 or int(num_negatives) < 1 or not nce_temperature > 0:
            raise UserError(
                "method 'crd' needs feat_dim >= 1, num_negatives >= 1 and nce_temperature > 0; "
                f"got {feat_dim}, {num_negatives}, {nce_temperature}"
            )
        if not 0 <= momentum < 1:
            raise UserError(f"method 'crd' needs 0 <= momentum < 1; got {momentum}")
        self.feat_dim = int(feat_dim)
        self.num_negatives = int(num_negatives)
        self.nce_temperature = nce_temperature
        self.momentum = momentum
        self.negatives = negatives
        self.negatives_replacement = bool(negatives_replacement)
        self.beta = beta
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.num_train = 0
        self.k = 0
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self._z_ready = False

    def setup(self, info: MethodSetup) -> None:
        if len(self.student_features) != 1 or len(self.teacher_features) != 1:
            raise UserError(
                f"method 'crd' embeds one feature per model; got student "
                f"{list(self.student_features)}, teacher {list(self.teacher_features)}"
            )
        if info.num_train < 2:
            raise UserError(f"method 'crd' needs at least 2 training samples; got {info.num_train}")
        (s_name,), (t_name,) = self.student_features, self.teacher_features
        for role, shapes, name in (
            ("student", info.student_shapes, s_name),
            ("teacher", info.teacher_shapes, t_name),
        ):
            if name not in shapes:
                raise UserError(f"method 'crd': the {role} produced no feature '{name}'")
        s_dim = math.prod(info.student_shapes[s_name][1:])
        t_dim = math.prod(info.teacher_shapes[t_name][1:])
        self.embed_s = nn.Linear(s_dim, self.feat_dim)
        self.embed_t = nn.Linear(t_dim, self.feat_dim)
        self.num_train = int(info.num_train)
        self.num_classes = int(info.num_classes)
        self.k = min(self.num_negatives, self.num_train - 1)
        if self.k < self.num_negatives:
            log.info("crd: %d negatives (the training set has %d samples)", self.k, self.num_train)
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        shape = (self.num_train, self.feat_dim)
        self.register_buffer("bank_student", torch.rand(shape).mul_(2 * bound).sub_(bound))
        self.register_buffer("bank_teacher", torch.rand(shape).mul_(2 * bound).sub_(bound))
        self.register_buffer("bank_labels", torch.full((self.num_train,), -1, dtype=torch.long))
        self.register_buffer("z", torch.full((2,), -1.0))
        self._z_ready = False

    def embed(self, head: nn.Module | None, feature: Tensor) -> Tensor:
        """L2-normalised linear embedding of a flattened feature."""
        assert head is not None, "setup() was not called"
        return F.normalize(head(feature.flatten(1).float()), dim=1)

    # --- negatives -----------------------------------------------------------------------
    def sample_indices(self, index: Tensor, labels: Tensor) -> Tensor:
        """(B, 1 + K) indices into the banks: the anchor's own index, then K negatives.

        For ``other_class`` the batch's labels are recorded first, so the anchor's class (and
        the anchor) is known before drawing.
        """
        n, k = self.num_train, self.k
        if self.negatives == "other_class":
            self.bank_labels.index_copy_(0, index, labels.long())
        if not self.negatives_replacement:
            negatives = self._without_replacement(index, labels)
            return torch.cat([index[:, None], negatives], dim=1)
        u = torch.rand((index.shape[0], k), device=index.device, dtype=torch.float64)
        if self.negatives == "uniform":
            # uniform over the n - 1 other samples: draw in [0, n - 1), skip the anchor
            r = (u * (n - 1)).long().clamp_(max=n - 2)
            negatives = r + (r >= index[:, None]).long()
        else:
            negatives = self._other_class(u, labels)
        return torch.cat([index[:, None], negatives], dim=1)

    def _candidates(self, index: Tensor, labels: Tensor) -> Tensor:
        """(B, n) bool: the samples each row may draw (not the anchor; for ``other_class`` not
        of the anchor's recorded class either)."""
        shape = (index.shape[0], self.num_train)
        allowed = torch.ones(shape, dtype=torch.bool, device=index.device)
        if self.negatives == "other_class":
            allowed &= self.bank_labels[None, :] != labels.long()[:, None]
        allowed[torch.arange(index.shape[0], device=index.device), index] = False
        return allowed

    def _without_replacement(self, index: Tensor, labels: Tensor) -> Tensor:
        """K distinct candidates per row (the K smallest of uniform keys); a row with fewer
        than K candidates is drawn with replacement among them, as the benchmark does."""
        allowed = self._candidates(index, labels)
        keys = torch.rand(allowed.shape, device=index.device).masked_fill_(~allowed, 2.0)
        distinct = keys.topk(self.k, dim=1, largest=False).indices
        short = allowed.sum(dim=1) < self.k
        if not bool(short.any()):
            return distinct
        weights = allowed[short].double()
        weights[weights.sum(dim=1) == 0] = 1.0  # no candidate at all: any sample
        repeated = torch.multinomial(weights, self.k, replacement=True)
        return distinct.masked_scatter(short[:, None].expand_as(distinct), repeated)

    def _other_class(self, u: Tensor, labels: Tensor) -> Tensor:
        """Negatives uniform over the samples whose recorded label differs from the anchor's.

        The bank indices are sorted by recorded label (unknown first), so each class is one
        contiguous block; a draw over the rest skips the anchor's block.
        """
        n = self.num_train
        key = self.bank_labels + 1  # 0: not seen yet
        order = torch.argsort(key, stable=True)
        counts = torch.zeros(self.num_classes + 1, dtype=torch.long, device=key.device)
        counts.index_add_(0, key, torch.ones_like(key))
        starts = torch.cumsum(counts, 0) - counts
        block = labels.long() + 1
        size, start = counts[block][:, None], starts[block][:, None]
        others = (n - size).clamp(min=1)
        r = torch.minimum((u * others).long(), others - 1)
        r = r + size * (r >= start).long()
        return order[r.clamp_(max=n - 1)]

    # --- loss ------------------------------------------------------------------------------
    def _log_z(self, scores_s: Tensor, scores_t: Tensor) -> Tensor:
        """log Z of both sides; set from this batch if not set yet (once, averaged over ranks)."""
        if not self._z_ready and bool((self.z <= 0).any()):
            with torch.no_grad():
                numel = scores_s.numel()
                log_mean = torch.stack(
                    [scores_s.flatten().logsumexp(0), scores_t.flatten().logsumexp(0)]
                ) - math.log(numel)
                z = torch.exp(log_mean.double() + math.log(self.num_train)).float()
                if distributed():
                    dist.all_reduce(z)
                    z /= dist.get_world_size()
                self.z.copy_(torch.where(self.z > 0, self.z, z))
            log.info("crd: normalisation constants Z = %.1f (student), %.1f (teacher)", *self.z)
        self._z_ready = True
        return self.z.log()

    def contrast_loss(self, v_s: Tensor, v_t: Tensor, index: Tensor, labels: Tensor) -> Tensor:
        """``L_s + L_t`` against the banks as they are now (the banks are not changed here)."""
        idx = self.sample_indices(index, labels)
        with torch.no_grad():
            rows_t = self.bank_teacher[idx].to(v_s.dtype)  # (B, 1 + K, D)
            rows_s = self.bank_student[idx].to(v_t.dtype)
        scores_s = torch.bmm(rows_t, v_s[:, :, None]).squeeze(2) / self.nce_temperature
        scores_t = torch.bmm(rows_s, v_t[:, :, None]).squeeze(2) / self.nce_temperature
        log_z = self._log_z(scores_s.detach(), scores_t.detach())
        return nce_loss(scores_s, log_z[0], self.num_train) + nce_loss(
            scores_t, log_z[1], self.num_train
        )

    @torch.no_grad()
    def update_banks(self, v_s: Tensor, v_t: Tensor, index: Tensor, labels: Tensor) -> None:
        """Momentum update of both banks with the batch (gathered from every rank if any)."""
        v_s, v_t, index, labels = v_s.detach(), v_t.detach(), index.long(), labels.long()
        if distributed():
            v_s, v_t, index, labels = gather_rows(v_s, v_t, index, labels)
        # repeated indices: every occurrence writes the row of the first one (deterministic)
        positions = torch.arange(index.shape[0], device=index.device)
        first = torch.full((self.num_train,), index.shape[0], device=index.device)
        first.scatter_reduce_(0, index, positions, reduce="amin")
        source = first[index]
        for bank, new in ((self.bank_student, v_s), (self.bank_teacher, v_t)):
            rows = momentum_update(bank[index], new[source].to(bank.dtype), self.momentum)
            bank.index_copy_(0, index, rows)
        self.bank_labels.index_copy_(0, index, labels[source])

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        if teacher is None:
            raise ValueError("method 'crd' needs a teacher")
        terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels)}
        if self.kd_weight:
            terms["kd"] = self.kd_weight * tempered_kl(
                student.logits, teacher.logits, self.temperature
            )
        (s_name,), (t_name,) = self.student_features, self.teacher_features
        f_s, f_t = student.features[s_name], teacher.features[t_name]
        index = index.long()
        with torch.autocast(f_s.device.type, enabled=False):  # scores / 0.07 need fp32
            v_s = self.embed(self.embed_s, f_s)
            v_t = self.embed(self.embed_t, f_t)
            terms[self.name] = self.beta * self.contrast_loss(v_s, v_t, index, labels)
        self.update_banks(v_s, v_t, index, labels)
        return terms
