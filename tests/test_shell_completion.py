"""Shell completion as a user installs it (`eval "$(hpmkd train -sc install=bash)"`), driven
through bash's completion function; and `hpmkd --version`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or not (BIN / "hpmkd").exists(),
    reason="needs bash and the installed hpmkd script",
)

# what bash sets before calling a completion function, for the line being typed
_COMPLETE = """
eval "$(hpmkd train -sc install=bash)"
line="$1"
COMP_LINE="$line"; COMP_POINT=${#line}
read -ra COMP_WORDS <<< "$line"
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
[[ "$line" == *" " ]] && COMP_CWORD=${#COMP_WORDS[@]}
hydra_bash_completion
printf '%s\\n' "${COMPREPLY[@]}"
"""


def _complete(line: str, tmp_path: Path) -> list[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env["HPMKD_CACHE"] = str(tmp_path)
    out = subprocess.run(
        ["bash", "-c", _COMPLETE, "complete", line],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_install_script_registers_the_hpmkd_program(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        ["hpmkd", "train", "-sc", "install=bash"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("-F hydra_bash_completion hpmkd")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hpmkd tr", ["train"]),
        ("hpmkd train stud", ["student=", "student."]),
        ("hpmkd train student=resnet11", ["student=resnet110", "student=resnet110_a"]),
        ("hpmkd train +strategy=kd method=fit", ["method=fitnet"]),
    ],
)
def test_bash_completes_commands_groups_and_options(
    tmp_path: Path, line: str, expected: list[str]
) -> None:
    assert sorted(_complete(line, tmp_path)) == sorted(expected)


def test_version(tmp_path: Path) -> None:
    out = subprocess.run([BIN / "hpmkd", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"hpmkd {version('hpmkd')}"
