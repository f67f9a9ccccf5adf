"""Publish a training snapshot as the checkpoint bundled in the package.

    python -m model.training.bundle runs/city/weights-020000.safetensors   (or runs/city/last.pt)

Writes ``model/checkpoints/zipmap_city_small.safetensors`` (float16 storage, under 50 MB), the JSON
config beside it and a ``.sha256`` file that :func:`model.weights.bundled_checkpoint` checks.
"""

from __future__ import annotations

import sys

import torch

from ..config import ZipMapConfig
from ..weights import BUNDLED_DIR, BUNDLED_NAME, load_zipmap, save_checkpoint, sha256_of
from ..zipmap import ZipMap


def bundle(snapshot: str) -> str:
    if snapshot.endswith(".pt"):  # a training state: weights under "model", config under "model_config"
        state = torch.load(snapshot, map_location="cpu", weights_only=True)
        model = ZipMap(ZipMapConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    else:
        model = load_zipmap(snapshot)
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    target = BUNDLED_DIR / BUNDLED_NAME
    save_checkpoint(model, str(target), dtype=torch.float16)
    target.with_suffix(".sha256").write_text(f"{sha256_of(target)}  {target.name}\n")
    return str(target)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(bundle(sys.argv[1]))
