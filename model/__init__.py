"""The ZipMap network, its weights I/O and geometry. No orchestration imports (Prefect, Dask)."""

from .config import PRESETS, ZipMapConfig, get_config
from .state import SceneState
from .zipmap import ZipMap

__all__ = ["PRESETS", "SceneState", "ZipMap", "ZipMapConfig", "get_config"]
