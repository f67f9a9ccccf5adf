"""The ZipMap network, its weights I/O and geometry. No orchestration imports (Prefect, Dask).

``model.config`` (presets) imports without torch, so parameter checks stay fast; the network classes
load on first use.
"""

from .config import PRESETS, ZipMapConfig, get_config

_LAZY = {"SceneState": ".state", "ZipMap": ".zipmap"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")


__all__ = ["PRESETS", "SceneState", "ZipMap", "ZipMapConfig", "get_config"]
