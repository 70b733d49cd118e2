"""Data sources register with @register_source; discovery imports only the requested source."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hpmkd.data import registry
from hpmkd.data.registry import SOURCE_TABLE, register_source, registered_sources


def test_the_table_names_the_module_of_every_registered_source():
    assert registered_sources() == SOURCE_TABLE


def test_loading_a_source_imports_its_module_only():
    code = (
        "import sys; from hpmkd.data import load_data; load_data({'name': 'digits'}); "
        "print(sorted(m for m in sys.modules if m.startswith('hpmkd.data.sources.'))); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    loaded = {m.rpartition(".")[2] for m in eval(out[0])}  # noqa: S307 - our own printed list
    assert "digits" in loaded and not loaded & {"cifar", "openml", "csv_table", "image_folder"}
    assert out[1] == "False"


def test_a_name_registered_by_two_loaders_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(registry, "_LOADERS", {})

    def first(cfg):
        return None

    assert register_source("toy")(first) is first
    with pytest.raises(ValueError, match="'toy' is registered twice"):
        register_source("toy")(lambda cfg: None)
    assert registry._LOADERS == {"toy": first}
