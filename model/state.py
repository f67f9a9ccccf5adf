"""The scene state: the fast weights of every TTT layer after zipping a collection.

Its size is fixed by the network (official model: 24 layers x 3 matrices of 1024 x 2048, about
604 MB in float32 per scene), independent of how many frames were zipped. It can be moved between
devices, carried from one streaming call to the next, and turned into plain numpy arrays (and back)
for storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from errors import InputError

from .ttt import FastWeights

WEIGHT_NAMES = ("w0", "w1", "w2")


@dataclass(frozen=True)
class SceneState:
    """Per-layer fast weights ``(w0, w1, w2)``, each ``[batch*heads, in, out]``."""

    layers: tuple[FastWeights, ...]
    batch_size: int = 1

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for layer in self.layers for w in layer)

    @property
    def device(self) -> torch.device:
        return self.layers[0][0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0][0].dtype

    def to(self, device=None, dtype=None) -> SceneState:
        layers = tuple(tuple(w.to(device=device, dtype=dtype) for w in layer) for layer in self.layers)
        return SceneState(layers, self.batch_size)  # type: ignore[arg-type]

    def detach(self) -> SceneState:
        return SceneState(tuple(tuple(w.detach() for w in layer) for layer in self.layers), self.batch_size)  # type: ignore[arg-type]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays named ``"{layer}.{w0|w1|w2}"`` (float32 stays float32; bf16 becomes float32)."""
        out = {}
        for i, layer in enumerate(self.layers):
            for name, w in zip(WEIGHT_NAMES, layer):
                w = w.detach().cpu()
                if w.dtype == torch.bfloat16:
                    w = w.float()
                out[f"{i}.{name}"] = w.numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], batch_size: int = 1, device=None, dtype=None,
                    ) -> SceneState:
        """Inverse of :meth:`to_arrays`; missing or extra names are an error that names them."""
        n = len(arrays) // len(WEIGHT_NAMES)
        expected = {f"{i}.{w}" for i in range(n) for w in WEIGHT_NAMES}
        if set(arrays) != expected:
            missing = sorted(expected - set(arrays))
            extra = sorted(set(arrays) - expected)
            raise InputError(f"scene state arrays: missing {missing}, unexpected {extra}")
        layers = tuple(
            tuple(torch.as_tensor(np.asarray(arrays[f"{i}.{w}"])).to(device=device, dtype=dtype)
                  for w in WEIGHT_NAMES)
            for i in range(n)
        )
        return cls(layers, batch_size)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shapes = tuple(tuple(w.shape) for w in self.layers[0]) if self.layers else ()
        return (f"SceneState(layers={self.num_layers}, shapes={shapes}, dtype={self.dtype}, "
                f"device={self.device}, nbytes={self.nbytes})")
