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
