"""Golden tests of CRD, contrastive representation distillation (Tian et al. 2020)."""

import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hpmkd.errors import UserError
from hpmkd.methods import ModelOutputs, build_method
from hpmkd.methods import crd as crd_module
from hpmkd.methods.crd import nce_loss

from .helpers import (
    check_one_step,
    feature_outputs,
    method_from_yaml,
    preset_method_config,
    setup_method,
)

EPS = 1e-7  # the reference implementation's epsilon, negligible next to K / N here


def _build(num_train=10, s_dim=5, t_dim=7, num_classes=3, **args):
    return setup_method(
        build_method({"name": "crd", **args}),
        {"pool": (2, s_dim)},
        {"pool": (2, t_dim)},
        num_classes=num_classes,
        num_train=num_train,
    )


def _outputs(f_s, f_t):
    return feature_outputs({"pool": f_s}, {"pool": f_t})


def _reference_side(scores: list[list[float]], z: float, n_data: int) -> float:
    """The paper's / RepDistiller's NCE loss of one side in plain floats: P = exp(s) / Z,
    h = P / (P + m Pn + eps), -(sum log h(pos) + sum log(1 - h(neg))) / batch."""
    m = len(scores[0]) - 1
    noise = m / n_data
    total = 0.0
    for row in scores:
        p = [math.exp(s) / z for s in row]
        total += math.log(p[0] / (p[0] + noise + EPS))
        total += sum(math.log(noise / (q + noise + EPS)) for q in p[1:])
    return -total / len(scores)


def _embed(linear, f):
    """normalise(W f + b), row by row, in plain Python floats."""
    w, b = linear.weight.tolist(), linear.bias.tolist()
    rows = []
    for x in f.tolist():
        y = [
            sum(wi * xi for wi, xi in zip(wr, x, strict=True)) + bi
            for wr, bi in zip(w, b, strict=True)
        ]
        norm = math.sqrt(sum(v * v for v in y))
        rows.append([v / norm for v in y])
    return rows


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- 1. closed-form cases ------------------------------------------------------------------


def test_nce_at_the_noise_level_is_two_log_two():
    # P = exp(s) / Z equals the noise mass K / N: h = 1/2 for the positive and the negative
    scores = torch.full((1, 2), math.log(0.5))
    assert nce_loss(scores, torch.tensor(0.0), 2).item() == pytest.approx(2 * math.log(2))


def test_perfect_separation_tends_to_zero():
    scores = torch.tensor([[60.0, -60.0, -60.0]])
    assert nce_loss(scores, torch.tensor(0.0), 10).item() == pytest.approx(0.0, abs=1e-12)


# --- 2. invariances -------------------------------------------------------------------------


def test_invariant_to_order_of_negatives_and_common_shift_of_scores_and_z():
    torch.manual_seed(0)
    scores = torch.randn(4, 9) * 5
    base = nce_loss(scores, torch.tensor(3.0), 100).item()
    shuffled = torch.cat([scores[:, :1], scores[:, 1:][:, torch.randperm(8)]], dim=1)
    assert nce_loss(shuffled, torch.tensor(3.0), 100).item() == pytest.approx(base, rel=1e-6)
    assert nce_loss(scores + 2.5, torch.tensor(5.5), 100).item() == pytest.approx(base, rel=1e-6)


def test_invariant_to_scaling_of_the_features_without_bias():
    torch.manual_seed(1)
    f_s, f_t = torch.randn(3, 5), torch.randn(3, 7)
    values = []
    for scale in (1.0, 40.0):
        torch.manual_seed(3)  # the same heads and banks for both scales
        method = _build(negatives="uniform")
        with torch.no_grad():
            method.embed_s.bias.zero_()
            method.embed_t.bias.zero_()
        torch.manual_seed(2)
        s, t = _outputs(scale * f_s, scale * f_t)
        values.append(method(s, t, torch.tensor([0, 1, 2]), torch.tensor([4, 0, 9]))["crd"].item())
    assert values[1] == pytest.approx(values[0], rel=1e-5)


# --- 3. values from an independent computation -----------------------------------------------


def test_loss_and_bank_update_match_independent_computation():
    torch.manual_seed(3)
    method = _build(num_negatives=3, beta=0.8, negatives="uniform")
    idx = torch.tensor([[4, 0, 7, 7], [1, 9, 4, 2]])
    method.sample_indices = lambda index, labels: idx  # fixed contrast sets
    f_s, f_t = torch.randn(2, 5), torch.randn(2, 7)
    labels, index = torch.tensor([2, 0]), torch.tensor([4, 1])
    old_s, old_t = method.bank_student.tolist(), method.bank_teacher.tolist()
    v_s, v_t = _embed(method.embed_s, f_s), _embed(method.embed_t, f_t)

    terms = method(*_outputs(f_s, f_t), labels, index)

    tau, n = 0.07, 10
    # student anchor against the teacher bank, teacher anchor against the student bank
    sc_s = [[_dot(old_t[j], v_s[b]) / tau for j in idx[b].tolist()] for b in range(2)]
    sc_t = [[_dot(old_s[j], v_t[b]) / tau for j in idx[b].tolist()] for b in range(2)]
    z_s = sum(math.exp(v) for row in sc_s for v in row) / 8 * n  # first batch: Z estimated
    z_t = sum(math.exp(v) for row in sc_t for v in row) / 8 * n
    expected = 0.8 * (_reference_side(sc_s, z_s, n) + _reference_side(sc_t, z_t, n))
    assert terms["crd"].item() == pytest.approx(expected, rel=1e-5)
    assert method.z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    assert terms["ce"].item() == pytest.approx(math.log(3), rel=1e-6)

    # after the loss: momentum 0.5 then renormalisation, at the batch's indices only
    for bank, old, v in ((method.bank_student, old_s, v_s), (method.bank_teacher, old_t, v_t)):
        for row in range(n):
            if row in (4, 1):
                b = [4, 1].index(row)
                mixed = [0.5 * o + 0.5 * x for o, x in zip(old[row], v[b], strict=True)]
                norm = math.sqrt(sum(x * x for x in mixed))
                expected = [x / norm for x in mixed]
                assert bank[row].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)
            else:
                assert bank[row].tolist() == old[row]
    assert method.bank_labels[[4, 1]].tolist() == [2, 0]

    # Z stays as estimated on the first batch
    z = method.z.clone()
    method(*_outputs(torch.randn(2, 5), torch.randn(2, 7)), labels, index)
    assert torch.equal(method.z, z)


def test_pinned_value():
    torch.manual_seed(4)
    method = _build(num_negatives=4, negatives="uniform")
    f_s, f_t = torch.randn(3, 5), torch.randn(3, 7)
    torch.manual_seed(5)
    value = method(*_outputs(f_s, f_t), torch.tensor([0, 1, 2]), torch.tensor([3, 8, 5]))["crd"]
    assert value.item() == pytest.approx(5.5896735, rel=1e-5)


# --- memory bank properties ------------------------------------------------------------------


def test_bank_is_a_buffer_untouched_by_gradients_and_reset_from_the_reference_range():
    torch.manual_seed(6)
    method = _build(num_train=50, feat_dim=12)
    bound = 1 / math.sqrt(12 / 3)
    for name in ("bank_student", "bank_teacher"):
        bank = getattr(method, name)
        assert name in dict(method.named_buffers())
        assert not bank.requires_grad and bank.shape == (50, 12)
        assert bank.min() >= -bound and bank.max() <= bound
    assert all(p.shape != (50, 12) for p in method.parameters())
    f_s = torch.randn(4, 5, requires_grad=True)
    terms = method(
        *_outputs(f_s, torch.randn(4, 7)), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 3, 4])
    )
    after_forward = method.bank_student.clone(), method.bank_teacher.clone()
    terms["crd"].backward()
    assert method.bank_student.grad is None and method.bank_teacher.grad is None
    assert torch.equal(method.bank_student, after_forward[0])
    assert torch.equal(method.bank_teacher, after_forward[1])
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    # the batch's rows are unit vectors now
    norms = method.bank_student[[1, 2, 3, 4]].norm(dim=1)
    assert torch.allclose(norms, torch.ones(4), atol=1e-6)


def test_repeated_index_in_a_batch_uses_its_first_occurrence():
    torch.manual_seed(7)
    method = _build()
    old = method.bank_student.clone()
    v_s, v_t = F.normalize(torch.randn(3, 128), dim=1), F.normalize(torch.randn(3, 128), dim=1)
    method.update_banks(v_s, v_t, torch.tensor([6, 2, 6]), torch.tensor([1, 0, 1]))
    expected = F.normalize(0.5 * old[6] + 0.5 * v_s[0], dim=0)
    assert torch.allclose(method.bank_student[6], expected, atol=1e-6)


# --- negatives -------------------------------------------------------------------------------


@pytest.mark.parametrize("negatives", ["uniform", "other_class"])
def test_fixed_seed_gives_the_same_negatives(negatives):
    method = _build(num_train=200, num_negatives=50, negatives=negatives)
    index, labels = torch.tensor([3, 17, 150]), torch.tensor([0, 1, 2])
    torch.manual_seed(8)
    first = method.sample_indices(index, labels)
    torch.manual_seed(8)
    again = method.sample_indices(index, labels)
    torch.manual_seed(9)
    other = method.sample_indices(index, labels)
    assert first.shape == (3, 51)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first[:, 0], index)  # the positive is the sample's own index
    assert (first[:, 1:] != index[:, None]).all()  # never the anchor itself
    assert first.min() >= 0 and first.max() < 200


def test_uniform_negatives_cover_every_other_sample():
    method = _build(num_train=6, negatives="uniform")
    torch.manual_seed(10)
    drawn = method.sample_indices(torch.full((1000,), 2), torch.zeros(1000, dtype=torch.long))
    counts = torch.bincount(drawn[:, 1:].flatten(), minlength=6)  # 5 per row: K clipped to 5
    assert counts[2] == 0 and (counts[[0, 1, 3, 4, 5]] > 800).all()


def test_other_class_negatives_avoid_the_anchor_class_once_labels_are_known():
    n = 30
    method = _build(num_train=n, num_classes=3, negatives="other_class")
    labels_all = torch.arange(n) % 3
    method.bank_labels.copy_(labels_all)
    torch.manual_seed(11)
    index = torch.tensor([0, 1, 2, 5]).repeat_interleave(100)
    idx = method.sample_indices(index, labels_all[index])
    assert idx.shape == (400, 30)
    for anchor in (0, 1, 2, 5):
        negatives = idx[index == anchor, 1:].flatten()
        assert (labels_all[negatives] != labels_all[anchor]).all()
        # uniform over the 20 samples of the other classes
        counts = torch.bincount(negatives, minlength=n)
        assert (counts > 0).sum() == 20 and counts.max() < 3 * counts[counts > 0].min()
    # labels not seen yet (-1): drawn like any other class; the anchor's class still excluded
    method.bank_labels.fill_(-1)
    method.bank_labels[:3] = labels_all[:3]
    idx = method.sample_indices(torch.tensor([0]), torch.tensor([0]))
    assert (idx[0, 1:] != 0).all() and (idx[0, 1:] != 3).any()


def test_negatives_clipped_to_the_training_set():
    method = _build(num_train=5, num_negatives=16384)
    assert method.k == 4
    torch.manual_seed(12)
    terms = method(
        *_outputs(torch.randn(2, 5), torch.randn(2, 7)), torch.tensor([0, 1]), torch.tensor([0, 3])
    )
    assert torch.isfinite(terms["crd"])
    with pytest.raises(UserError, match="'crd' needs at least 2 training samples"):
        _build(num_train=1)


# --- distributed -----------------------------------------------------------------------------


def test_single_process_skips_the_all_gather(monkeypatch):
    assert not dist.is_initialized()

    def fail(*args):
        raise AssertionError("all-gather called without torch.distributed")

    monkeypatch.setattr(crd_module, "gather_rows", fail)
    monkeypatch.setattr(dist, "all_gather", fail)
    monkeypatch.setattr(dist, "all_reduce", fail)
    method = _build()
    torch.manual_seed(13)
    method(
        *_outputs(torch.randn(2, 5), torch.randn(2, 7)), torch.tensor([0, 1]), torch.tensor([0, 3])
    )


def _rank_main(rank, store, out_dir):
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same seed on both ranks: the same initial banks and heads
        method = _build(num_train=12, num_negatives=4)
        torch.manual_seed(100 + rank)  # different batches (sizes differ) and negatives per rank
        n = 3 if rank == 0 else 2
        index = torch.tensor([0, 5, 7]) if rank == 0 else torch.tensor([11, 2])
        f_s, f_t = torch.randn(n, 5), torch.randn(n, 7)
        v_s, v_t = method.embed(method.embed_s, f_s), method.embed(method.embed_t, f_t)
        method(*_outputs(f_s, f_t), torch.arange(n) % 3, index)
        torch.save(
            {
                "bank_student": method.bank_student,
                "bank_teacher": method.bank_teacher,
                "bank_labels": method.bank_labels,
                "z": method.z,
                "v_s": v_s.detach(),
                "v_t": v_t.detach(),
                "index": index,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    "fork" not in mp.get_all_start_methods() or not dist.is_gloo_available(),
    reason="needs fork and the gloo backend",
)
def test_two_ranks_keep_identical_banks(tmp_path):
    context = mp.start_processes(
        _rank_main, args=(tmp_path / "store", tmp_path), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in 60 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("bank_student", "bank_teacher", "bank_labels", "z"):
        assert torch.equal(r0[key], r1[key]), key
    torch.manual_seed(0)
    initial = _build(num_train=12, num_negatives=4)
    for bank, v in (("bank_student", "v_s"), ("bank_teacher", "v_t")):
        expected = getattr(initial, bank).clone()
        for r in (r0, r1):  # every rank's batch applied, as one process would
            expected[r["index"]] = F.normalize(0.5 * expected[r["index"]] + 0.5 * r[v], dim=1)
        assert torch.allclose(r0[bank], expected, atol=1e-6)
    assert r0["bank_labels"][[0, 5, 7, 11, 2]].tolist() == [0, 1, 2, 0, 1]


# --- one training step -----------------------------------------------------------------------


def test_one_step_reaches_student_and_both_heads_not_the_teacher():
    torch.manual_seed(14)
    student = torch.nn.Linear(6, 5)
    teacher = torch.nn.Linear(6, 7).requires_grad_(False)
    method = _build(num_train=40, num_negatives=16, feat_dim=8)
    x, y, index = torch.randn(16, 6), torch.randint(0, 3, (16,)), torch.randperm(40)[:16]
    banks = {k: v.clone() for k, v in method.named_buffers() if k.startswith("bank")}

    def loss():
        # the same banks and negatives before and after the step (Z is kept from the first call)
        for k, v in banks.items():
            getattr(method, k).copy_(v)
        torch.manual_seed(15)
        f_s, f_t = student(x), teacher(x)
        s = ModelOutputs(f_s[:, :3], {"pool": f_s})
        t = ModelOutputs(f_t[:, :3], {"pool": f_t})
        return sum(method(s, t, y, index).values())

    learn = list(student.parameters()) + list(method.parameters())
    check_one_step(loss, learn, teacher.parameters(), lr=0.1)


# --- config ----------------------------------------------------------------------------------


def test_yaml_keys_are_exactly_the_constructor_arguments():
    method = method_from_yaml("crd")
    assert (method.feat_dim, method.num_negatives, method.nce_temperature, method.momentum) == (
        128,
        16384,
        0.07,
        0.5,
    )
    assert (method.beta, method.ce_weight, method.kd_weight) == (0.8, 1.0, 0.0)


def test_kd_term_when_kd_weight_is_set():
    method = _build(kd_weight=1.0)
    s = ModelOutputs(torch.tensor([[1.0, 0.0, 2.0]]), {"pool": torch.randn(1, 5)})
    t = ModelOutputs(torch.tensor([[0.0, 3.0, 1.0]]), {"pool": torch.randn(1, 7)})
    terms = method(s, t, torch.tensor([2]), torch.tensor([0]))
    assert set(terms) == {"ce", "kd", "crd"}


# --- without replacement (the benchmark's loader, CRD presets) ----------------------------


def test_without_replacement_draws_distinct_other_class_negatives():
    n = 60
    method = _build(num_train=n, num_classes=3, num_negatives=35, negatives_replacement=False)
    labels_all = torch.arange(n) % 3
    method.bank_labels.copy_(labels_all)
    torch.manual_seed(12)
    index = torch.tensor([0, 1, 2, 5, 7])
    idx = method.sample_indices(index, labels_all[index])
    assert idx.shape == (5, 36) and torch.equal(idx[:, 0], index)
    for row, anchor in zip(idx, index, strict=True):
        negatives = row[1:]
        assert negatives.unique().numel() == 35  # no repeats
        assert (labels_all[negatives] != labels_all[anchor]).all()


def test_with_replacement_repeats_as_before():
    n = 60
    method = _build(num_train=n, num_classes=3, num_negatives=35, negatives="other_class")
    method.bank_labels.copy_(torch.arange(n) % 3)
    torch.manual_seed(12)
    idx = method.sample_indices(torch.tensor([0, 1, 2, 5, 7]), torch.tensor([0, 1, 2, 2, 1]))
    # 35 draws from 40 candidates with replacement: P(no repeat in a row) < 1e-7
    assert all(row[1:].unique().numel() < 35 for row in idx)


def test_without_replacement_falls_back_to_replacement_when_a_row_is_short():
    n = 12
    method = _build(num_train=n, num_classes=2, num_negatives=8, negatives_replacement=False)
    labels_all = torch.tensor([0] * 9 + [1] * 3)
    method.bank_labels.copy_(labels_all)
    torch.manual_seed(13)
    idx = method.sample_indices(torch.tensor([0, 10]), labels_all[[0, 10]])
    assert idx[0, 1:].unique().numel() < 8  # class 0: 3 candidates for 8 draws
    assert set(idx[0, 1:].tolist()) <= {9, 10, 11}
    assert idx[1, 1:].unique().numel() == 8  # class 1: 9 candidates, distinct
    assert (labels_all[idx[1, 1:]] == 0).all()


def test_without_replacement_uniform_never_draws_the_anchor():
    method = _build(num_train=6, negatives="uniform", negatives_replacement=False)
    torch.manual_seed(14)
    idx = method.sample_indices(torch.tensor([2, 4]), torch.tensor([0, 0]))
    assert sorted(idx[0, 1:].tolist()) == [0, 1, 3, 4, 5]  # K clipped to 5: all the others
    assert sorted(idx[1, 1:].tolist()) == [0, 1, 2, 3, 5]


def test_crd_presets_draw_without_replacement():
    for pair in ("r56_r20", "r110_r32", "r32x4_r8x4", "wrn40_2_wrn16_2", "vgg13_vgg8"):
        cfg = preset_method_config(f"crd_cifar100/{pair}", "crd")
        assert build_method(cfg).negatives_replacement is False
    assert build_method({"name": "crd"}).negatives_replacement is True
