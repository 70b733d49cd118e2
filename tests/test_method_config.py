"""A method by name as Hydra composes it: SMSKD's stages see the run's fidelity."""

import pytest
from omegaconf import OmegaConf

from hpmkd.errors import UserError
from hpmkd.method_config import method_config
from hpmkd.strategies.smskd import stage_plan


def test_stage_methods_resolve_against_the_run_config():
    root = OmegaConf.create({"fidelity": {"features": {"at": ["feat[1:-1]"]}}})
    strategy = OmegaConf.create({"methods": ["at", {"name": "kd", "temperature": 2.0}],
                                 "transitions": [3]})  # fmt: skip
    methods, starts = stage_plan(strategy, 10, root)
    assert methods[0]["student_features"] == ["feat[1:-1]"]
    assert methods[1]["temperature"] == 2.0 and starts == [0, 3]
    # without the run's config: the method's own default
    assert stage_plan(strategy, 10)[0][0]["student_features"] == ["stages"]


def test_unknown_method_is_one_line():
    with pytest.raises(UserError, match="unknown method 'nope'; valid: .*fitnet"):
        method_config("nope")
