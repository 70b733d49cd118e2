"""Layering: nothing below the strategies imports them (module-level or inside a function)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpmkd"
LOWER = ("hpm", "engine", "methods", "models", "data", "deploy")


def strategy_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {n}" for n in names
                  if n == "hpmkd.strategies" or n.startswith("hpmkd.strategies.")]  # fmt: skip
    return found


def test_no_lower_layer_imports_the_strategies():
    files = [f for layer in LOWER for f in sorted((PACKAGE / layer).rglob("*.py"))]
    assert len(files) > 50
    offenders = [hit for f in files for hit in strategy_imports(f)]
    assert offenders == []


def test_the_check_sees_function_level_imports(tmp_path):
    module = tmp_path / "hpmkd" / "m.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from hpmkd.strategies.kd import run\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "hpmkd"
    try:
        assert strategy_imports(module) == ["hpmkd/m.py:2 hpmkd.strategies.kd",
                                            "hpmkd/m.py:2 hpmkd.strategies.kd.run"]  # fmt: skip
    finally:
        PACKAGE = saved
