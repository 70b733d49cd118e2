"""The Python API: the docs/api.md example runs, and each kind of argument takes the CLI's path."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hpmkd
from hpmkd.errors import UserError
from hpmkd.methods import build_method

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
QUICK = ["recipe=smoke", "recipe.epochs=1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPMKD_CACHE", str(tmp_path / "cache"))


def test_the_documented_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert namespace["fitnet"].metrics["method"] == "fitnet"
    assert namespace["kd"].results_file.is_file()


def test_zoo_names_run_like_the_cli(tmp_path):
    result = hpmkd.distill("mlp", "mlp_small", method="at", overrides=QUICK, out_dir=tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["status"] == "completed" and result.metrics["test_acc"] == written["test_acc"]
    assert written["method"] == "at" and written["config"]["student"]["arch"] == "mlp_small"
    # the returned student holds the weights written as student.pt
    saved = torch.load(result.student_file)
    assert all(torch.equal(v, saved[k]) for k, v in result.student.state_dict().items())


def modules():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), nn.Sequential(
        nn.Flatten(), nn.Linear(64, 10)
    )


def test_modules_tensors_and_a_method_instance(tmp_path):
    teacher, student = modules()
    x, y = torch.randn(200, 64), torch.arange(200) % 10
    method = build_method({"name": "kd", "temperature": 2.0})
    result = hpmkd.distill(teacher, student, method=method, data=(x, y), overrides=QUICK,
                           out_dir=tmp_path)  # fmt: skip
    assert result.metrics["teacher"]["extra"]["source"] == "module"
    assert result.metrics["config"]["method"] == {"name": "kd", "instance": "KD"}
    assert result.metrics["data"]["train"] + result.metrics["data"]["val"] + \
        result.metrics["data"]["test"] == 200  # fmt: skip
    assert isinstance(result.student, nn.Sequential)
    assert not torch.equal(result.student[1].weight, student[1].weight)  # trained, a copy


def test_a_torch_dataset_and_a_strategy_by_name(tmp_path):
    x, y = torch.randn(200, 8), torch.arange(200) % 4
    result = hpmkd.distill("mlp", "mlp_small", data=TensorDataset(x, y), strategy="smskd",
                           overrides=[*QUICK, "recipe.epochs=2", "strategy.methods=[kd,kd]",
                                      "strategy.transitions=[1]"], out_dir=tmp_path)  # fmt: skip
    assert result.metrics["strategy"] == "smskd" and result.metrics["data"]["num_classes"] == 4


def test_plain_training(tmp_path):
    result = hpmkd.fit("mlp_small", overrides=QUICK, out_dir=tmp_path)
    assert result.metrics["strategy"] == "plain" and result.metrics["teacher"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"teacher": 3}, "teacher must be a model name or an nn.Module, got int"),
        ({"data": [1, 2]}, "data must be a dataset name, a DataSplits, tensors"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"strategy": "progressive", "method": build_method({"name": "kd"})},
         "a method instance works with strategy 'kd'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line(kwargs, message, tmp_path):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        hpmkd.distill(**{"overrides": QUICK, "out_dir": tmp_path, **kwargs})
    assert "\n" not in str(err.value)
