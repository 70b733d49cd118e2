"""scripts/reproduce.py: every command it prints composes, and each setting lists its members."""

from __future__ import annotations

import importlib.util
import io
import itertools
import shlex
import sys
import tarfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from hpmkd import config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
reproduce = sys.modules["reproduce"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)

CRD_ROWS = {
    "plain",
    *reproduce.CRD_METHODS.split(","),
    *reproduce.CRD_INIT_STAGE_METHODS.split(","),
}


def printed(setting: str, *flags: str) -> list[list[str]]:
    """The command lines `reproduce.py <setting> --dry-run <flags>` prints."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert reproduce.main([setting, "--dry-run", *flags]) == 0
    return [shlex.split(line) for line in buffer.getvalue().splitlines()]


def expand(line: list[str]) -> tuple[list[str], list[list[str]]]:
    """One `hpmkd train -m` line as (its base: the unswept overrides, which Hydra's multirun
    composes before it sweeps; every member's overrides, one value per swept key)."""
    assert line[:3] == ["hpmkd", "train", "-m"]
    base, choices = [], []
    for override in OverridesParser.create().parse_overrides(line[3:]):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            base.append(override.input_line)
            choices.append([override.input_line])
    return base, [list(member) for member in itertools.product(*choices)]


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.lstrip("+").split("=", 1) for o in overrides)


def train_members(setting: str, *flags: str) -> list[dict[str, str]]:
    lines = printed(setting, *flags)
    assert lines[-1][:2] == ["hpmkd", "report"]
    return [as_dict(member) for line in lines[:-1] for member in expand(line)[1]]


def _rows(setting: str) -> set[tuple[str, str]]:
    """(experiment, the row's strategy, method or ablated component) of every member."""
    return {
        (m["experiment"], m.get("strategy") or m.get("method") or m.get("ablate") or "-")
        for m in train_members(setting)
    }


def test_crd_table_lists_every_row_of_every_pair():
    expected = {(f"crd_cifar100/{p}", row) for p in reproduce.CRD_PAIRS for row in CRD_ROWS}
    assert _rows("crd_table") == expected
    assert {"dkd", "crd", "ab", "plain"} <= CRD_ROWS and len(CRD_ROWS) == 15
    assert _rows("crd_wrn40_2_wrn16_2") == {
        ("crd_cifar100/wrn40_2_wrn16_2", row) for row in CRD_ROWS
    }


def test_hpmkd_settings_list_baselines_and_the_ablation():
    expected = {"plain", "kd", "none", "acm", "pdc", "awmt", "mts", "ppp", "som"}
    assert _rows("hpmkd_adult") == {("hpmkd/adult", row) for row in expected}
    assert {m["seed"] for m in train_members("hpmkd_adult")} == {"0", "1", "2"}


def test_smskd_lists_baselines_stages_and_ablations():
    found = train_members("smskd")
    assert {m.get("method") for m in found} >= {"fitnet", "kd", "at"}
    assert {m.get("strategy.weight") for m in found} >= {
        "teacher_tcp", "one_minus_teacher_tcp", "reference_tcp", "none",
    }  # fmt: skip
    assert {m["experiment"] for m in found} == {
        "crd_cifar100/r56_r20", "smskd_cifar100", "smskd_cifar100_3stage",
    }  # fmt: skip
    assert any(m.get("strategy.reference") == "false" for m in found)
    assert any(m.get("strategy") == "aggregate" for m in found)


@pytest.mark.parametrize("setting", sorted(reproduce.SETTINGS))
def test_budget_version_is_the_same_sweeps_on_tiny_offline_settings(setting):
    full, budget = train_members(setting), train_members(setting, "--budget")
    strip = ("seed", "store.root", "hydra.sweep.dir")
    assert len(full) == 3 * len(budget)  # three seeds against one
    assert {m["experiment"] for m in full} == {m["experiment"] for m in budget}
    for member in budget:
        assert member["seed"] == "0" and int(member["recipe.epochs"]) <= 10
        assert member["data"] in {"cifar10_jpeg", "magic", "breast_cancer", "penbased"}
        assert "outputs/reproduce_budget/" in member["hydra.sweep.dir"]
    assert {k for m in full for k in m} - set(strip) <= {k for m in budget for k in m}
    assert "budget" in printed(setting, "--budget")[-1][-1]  # the report's title says so


def distinct_overrides(every_member: bool) -> list[list[str]]:
    """Distinct override lists over all settings and both versions: the base of every command
    line, and with ``every_member`` every member too. Seed and output paths are left out: plain
    values, they cannot change what composes."""
    ignored = ("seed=", "store.root=", "hydra.sweep.dir=")
    found = set()
    for setting in reproduce.SETTINGS:
        for flags in ((), ("--budget",)):
            for line in printed(setting, *flags)[:-1]:
                base, members = expand(line)
                for overrides in [base, *members] if every_member else [base]:
                    found.add(tuple(o for o in overrides if not o.startswith(ignored)))
    return [list(overrides) for overrides in sorted(found)]


def compose_and_validate(members: list[list[str]]) -> None:
    from hpmkd.strategies.smskd import stage_plan

    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        for overrides in members:
            cfg = compose("train", overrides=overrides)
            config.validate(cfg)
            if cfg.strategy.name == "smskd":  # every stage starts before the last epoch
                stage_plan(cfg.strategy, cfg.recipe.epochs)


def test_every_printed_command_composes():
    """Each line's base composes, and every swept choice of a config group is an option of it;
    the members themselves: the slow test below."""
    compose_and_validate(distinct_overrides(every_member=False))
    conf = config.config_dir()
    for setting in reproduce.SETTINGS:
        for line in printed(setting)[:-1]:
            for override in OverridesParser.create().parse_overrides(line[3:]):
                group = override.get_key_element()
                if override.is_sweep_override() and (conf / group).is_dir():
                    for choice in override.sweep_string_iterator():
                        assert (conf / group / f"{choice}.yaml").is_file(), (group, choice)


@pytest.mark.slow
def test_every_printed_member_composes():
    compose_and_validate(distinct_overrides(every_member=True))


def test_budget_images_are_a_class_balanced_subset(tmp_path, monkeypatch):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        readme = tarfile.TarInfo("README.md")  # files outside <split>/<class>/ are left out
        readme.size = 2
        tar.addfile(readme, io.BytesIO(b"hi"))
        for split, label, i in itertools.product(("train", "test"), ("cat", "dog"), range(40)):
            info = tarfile.TarInfo(f"{split}/{label}/{i:04d}.jpg")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"jpg"))
    monkeypatch.setattr(reproduce, "CIFAR10_JPEG_TAR", archive)
    folder = tmp_path / "subset"
    reproduce.unpack_budget_images(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["test", "train"]
    kept = {"train": reproduce.BUDGET_TRAIN_PER_CLASS, "test": reproduce.BUDGET_TEST_PER_CLASS}
    for split, per_class in kept.items():
        for label in ("cat", "dog"):
            names = sorted(p.name for p in (folder / split / label).iterdir())
            assert names == [f"{i:04d}.jpg" for i in range(per_class)]


@pytest.mark.parametrize("flags", [(), ("--budget",)])
def test_crd_table_members_run_with_the_benchmarks_code_around_the_losses(flags):
    """Every crd_table member composes with fidelity=repdistiller (docs/reproduce.md,
    "Fidelity"): FT's attention factor, AB's identity connector, CRD without replacement."""
    config.setup()
    members = {
        tuple(sorted(o for o in m if o.split("=")[0] in {"experiment", "method"}))
        for line in printed("crd_table", *flags)[:-1]
        for m in expand(line)[1]
    }
    checked = set()
    for member in members:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=list(member))
        assert cfg.fidelity.name == "repdistiller", member
        method = cfg.get("method")
        name = method.name if method is not None else "plain"
        expected = {"ft": ("factor", "attention"), "ab": ("connector", "identity_if_same")}
        expected["crd"] = ("negatives_replacement", False)
        if name in expected:
            key, value = expected[name]
            assert method[key] == value, member
            checked.add(name)
    assert checked == {"ft", "ab", "crd"}
