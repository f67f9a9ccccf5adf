"""Layering: every intended import rule, checked on every file (imports inside functions included).

Imports point down the list flows -> tasks -> model / storage -> validation -> infra:
- ``model/`` imports nothing of ``storage/``, ``tasks/``, ``flows/``, ``validation/``, the CLI or the
  orchestration libraries (Prefect, Dask): the network and its evaluation take arrays;
- ``storage/`` imports nothing of ``tasks/``, ``flows/``, ``model/``, the CLI or orchestration;
- ``validation/`` imports nothing of ``flows/``, ``tasks/``, ``model/`` or the CLI;
- ``tasks/`` imports nothing of ``flows/`` or the CLI;
- ``errors.py`` and ``pose_rules.py`` import nothing of ours (every layer may use them).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION = {"prefect", "prefect_dask", "dask", "distributed"}
RULES = {
    "model": {"storage", "tasks", "flows", "validation", "cli", "great_expectations"} | ORCHESTRATION,
    "storage": {"tasks", "flows", "model", "cli", "validation"} | ORCHESTRATION,
    "validation": {"flows", "tasks", "model", "cli"} | ORCHESTRATION,
    "tasks": {"flows", "cli"},
    "errors.py": {"model", "storage", "tasks", "flows", "validation", "cli", "settings", "pose_rules"},
    "pose_rules.py": {"model", "storage", "tasks", "flows", "validation", "cli", "settings", "errors"},
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("layer", sorted(RULES))
def test_imports_point_down(layer):
    target = ROOT / layer
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    assert files, f"{layer}: nothing to check"
    offenders = [f"{path.relative_to(ROOT)}: imports {name}" for path in files for name in _imports(path)
                 if name in RULES[layer]]
    assert not offenders, offenders


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from storage.collection import read_collection\n    import tasks.stages\n")
    assert set(_imports(sample)) == {"storage", "tasks"}
