import multiprocessing as mp

import torch

from hpmkd.store import ArtifactStore, content_key


def test_key_is_canonical_and_sensitive():
    a = content_key("model", {"arch": "resnet20", "seed": 0, "recipe": {"lr": 0.1, "epochs": 3}})
    b = content_key("model", {"recipe": {"epochs": 3, "lr": 0.1}, "seed": 0, "arch": "resnet20"})
    assert a == b
    assert a != content_key(
        "model", {"arch": "resnet20", "seed": 1, "recipe": {"lr": 0.1, "epochs": 3}}
    )
    assert a != content_key(
        "run", {"arch": "resnet20", "seed": 0, "recipe": {"lr": 0.1, "epochs": 3}}
    )


def test_put_then_get_roundtrip(tmp_path):
    store = ArtifactStore(tmp_path)
    key = content_key("model", {"x": 1})
    assert store.get(key) is None
    state = {"w": torch.arange(3.0)}
    artifact = store.put_model(key, state, {"arch": "mlp"})
    again = store.get(key)
    assert again is not None and again.meta["arch"] == "mlp" and again.meta["key"] == key
    assert torch.equal(torch.load(artifact.model_file, weights_only=True)["w"], state["w"])
    assert [a.key for a in store.list()] == [key]
    assert not any((tmp_path / "staging").iterdir())


def _writer(root: str, key: str, value: float) -> None:
    store = ArtifactStore(root)
    with store.lock(key):
        if store.get(key) is None:
            store.put_model(key, {"w": torch.tensor([value])}, {"writer": value})


def test_two_processes_writing_the_same_key_leave_one_complete_artifact(tmp_path):
    key = content_key("model", {"x": 2})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, float(i))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    artifact = ArtifactStore(tmp_path).get(key)
    assert artifact is not None
    value = torch.load(artifact.model_file, weights_only=True)["w"].item()
    assert value == artifact.meta["writer"]


def test_gc_removes_only_what_the_filters_name(tmp_path):
    store = ArtifactStore(tmp_path)
    teacher = store.put_model(
        content_key("model", {"t": 1}), {"w": torch.zeros(1)}, {"role": "teacher"}
    )
    link = store.put_model(content_key("model", {"l": 1}), {"w": torch.zeros(1)}, {"role": "link1"})
    assert store.gc() == []  # no filter: nothing goes
    assert [a.key for a in store.gc(roles=["link1"], dry_run=True)] == [link.key]
    assert store.get(link.key) is not None  # a dry run removes nothing
    assert [a.key for a in store.gc(roles=["link1"])] == [link.key]
    assert store.get(link.key) is None and store.get(teacher.key) is not None
    assert store.gc(older_than_days=1) == []  # created just now
    assert [a.key for a in store.gc(older_than_days=0)] == [teacher.key]
    assert store.list() == []
