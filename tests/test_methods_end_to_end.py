"""Every method of the zoo trains end to end through `hpmkd train` on a small CNN pair.

Golden tests check each loss in isolation; this checks the wiring: feature aliases resolve on
real zoo models, connectors are built from the dry forward pass and optimised, initialisation
stages run, and results.json counts the extra parameters.
"""

from __future__ import annotations

import pytest

from hpmkd.config import config_dir

# multi_teacher needs a teacher ensemble: tests/test_hpm_cli.py runs it via +strategy=multi_teacher
METHODS = sorted(
    p.stem for p in (config_dir() / "method").glob("*.yaml") if p.stem != "multi_teacher"
)
WITH_INIT_STAGE = {"ab", "ft", "fsp"}
WITH_CONNECTORS = {"fitnet", "vid", "cc", "crd", "ab", "ft", "sakd"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store for the module: the teacher is trained by the first test and reused after."""
    return tmp_path_factory.mktemp("store")


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_resnet8_from_resnet14_on_digits(method, run_cli, shared_store):
    overrides = [
        "+strategy=kd", f"method={method}", "teacher=resnet14", "student=resnet8",
        "recipe=smoke", "recipe.epochs=1", "trainer.enable_progress_bar=false",
        f"store.root={shared_store}", "teacher.seed=0",
    ]  # fmt: skip
    if method in WITH_INIT_STAGE:
        overrides.append("method.init_epochs=1")
    run = run_cli("train", *overrides)
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["method"] == method and results["epochs"] == 1
    assert results["test_acc"] is not None
    extra = results["student"]["extra_params"]
    assert (extra > 0) == (method in WITH_CONNECTORS), extra
