"""model/ is the network only: it must not import orchestration or storage code."""

import ast
from pathlib import Path

FORBIDDEN = {"prefect", "prefect_dask", "dask", "distributed", "storage", "tasks", "flows", "validation",
             "great_expectations"}


def test_model_imports_no_orchestration_or_storage():
    root = Path(__file__).resolve().parents[2] / "model"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
