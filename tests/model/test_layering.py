"""Layering: model/ never imports orchestration; the network itself imports no storage code.

Imports point down the list flows -> tasks -> model -> storage -> validation -> infra. The
network files (everything in model/ outside training/, evaluation/ and synthetic/) stay free of
storage too, so the network can be used alone.
"""

import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parents[2] / "model"
NEVER = {"prefect", "prefect_dask", "dask", "distributed", "flows", "tasks", "cli"}
NOT_IN_NETWORK = {"storage", "validation", "great_expectations"}
SUPPORT_PACKAGES = {"training", "evaluation", "synthetic"}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


def test_model_imports_point_down():
    offenders = []
    for path in MODEL.rglob("*.py"):
        in_network = path.relative_to(MODEL).parts[0] not in SUPPORT_PACKAGES
        for name in _imports(path):
            if name in NEVER or (in_network and name in NOT_IN_NETWORK):
                offenders.append(f"{path.relative_to(MODEL)}: {name}")
    assert not offenders, offenders
