"""ZipMap network configuration: one frozen dataclass and a table of named presets.

The defaults of :class:`ZipMapConfig` are the published official size (arXiv 2603.04385, and the
authors' training configs): a DINOv2 ViT-L/14 patch embedding with 4 registers, embed dim 1024,
24 frame-attention blocks alternating with 24 global test-time-training (TTT) blocks, one TTT head
of dim 1024 with a SwiGLU fast-weight MLP of hidden size 2048, base learning rate 0.01, 5
Newton-Schulz steps and a gated output.

The four published variants differ only in a few switches (see ``PRESETS``):

- ``main``        offline, bidirectional, affine-invariant camera/register tokens
- ``ref_view``    offline, the first frame gets its own camera/register tokens (reference view)
- ``streaming``   windowed online mode with a carried scene state and an MLP camera head
- ``state_query`` ``ref_view`` plus an RGB-D head answering Plücker ray queries from the state

Small presets (``small``, ``tiny``) keep the same structure at CPU-friendly sizes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from errors import ConfigError

PATCH_EMBEDS = ("dinov2", "conv")
GLOBAL_MIXERS = ("ttt", "attention")
CAMERA_HEADS = ("iterative", "mlp", "none")
NS_DTYPES = ("bfloat16", "float32", "input")


@dataclass(frozen=True)
class ZipMapConfig:
    """Every hyperparameter of the network. Defaults are the published official size."""

    # --- image tokens -------------------------------------------------------------------------
    img_size: int = 518  # training resolution; sets the size of the DINOv2 position table
    patch_size: int = 14
    embed_dim: int = 1024
    num_register_tokens: int = 4
    patch_embed: str = "dinov2"  # "dinov2" (ViT with registers) or "conv" (one strided conv)
    vit_depth: int = 24  # DINOv2 blocks inside the patch embedding (ViT-L: 24)
    vit_num_heads: int = 16

    # --- aggregator: frame attention alternating with global mixing -----------------------------
    depth: int = 24  # number of (frame, global) block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01  # layer-scale init
    affine_invariant: bool = True  # all frames share camera/register tokens (no reference view)
    # Aggregator layers whose (frame, global) outputs feed the DPT heads; the camera head reads the
    # last of them. The official model uses blocks 4, 11, 17 and 23.
    intermediate_layers: tuple[int, ...] = (4, 11, 17, 23)

    # --- global mixing: TTT (ZipMap) or softmax attention (the quadratic VGGT-style baseline) ---
    global_mixer: str = "ttt"
    ttt_head_dim: int = 1024
    ttt_inter_multi: int = 2  # fast-weight hidden size = head_dim * inter_multi
    ttt_base_lr: float = 0.01
    ttt_muon_steps: int = 5  # Newton-Schulz iterations on each fast-weight update
    ttt_gate: bool = True  # gated RMSNorm output
    ttt_bias: bool = True
    # Dtype of the Newton-Schulz iteration: "bfloat16" is the published numerics; "input" keeps
    # the activations' dtype (float64 for the reference parity checks).
    ns_dtype: str = "bfloat16"
    # Streaming: frames per TTT window when a call does not say (None = bidirectional offline).
    default_window: int | None = None

    # --- heads ----------------------------------------------------------------------------------
    camera_head: str = "iterative"  # "iterative" (trunk + 4 refinement steps), "mlp" or "none"
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    # Our addition for small models trained on little compute (not in the published ZipMap): every
    # frame's patches are matched against the reference frame's, and a summary of that match field is
    # added to the frame's camera token (model.heads.camera.ReferenceMatch). Off for the published presets.
    camera_ref_match: bool = False
    enable_depth: bool = True
    enable_local_points: bool = True
    enable_nvs: bool = False  # RGB-D head answering ray queries (state-query variant)
    nvs_ray_dim: int = 9  # ray origin, direction, origin x direction
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_frames_chunk: int = 8  # frames per DPT chunk, bounds head memory

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"ZipMapConfig: {msg}")

        if self.patch_embed not in PATCH_EMBEDS:
            bad(f"patch_embed={self.patch_embed!r}, expected one of {PATCH_EMBEDS}")
        if self.global_mixer not in GLOBAL_MIXERS:
            bad(f"global_mixer={self.global_mixer!r}, expected one of {GLOBAL_MIXERS}")
        if self.camera_head not in CAMERA_HEADS:
            bad(f"camera_head={self.camera_head!r}, expected one of {CAMERA_HEADS}")
        if self.ns_dtype not in NS_DTYPES:
            bad(f"ns_dtype={self.ns_dtype!r}, expected one of {NS_DTYPES}")
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            bad("the attention head dim must be a multiple of 4 for 2-D RoPE")
        if self.embed_dim % self.ttt_head_dim:
            bad(f"embed_dim={self.embed_dim} is not divisible by ttt_head_dim={self.ttt_head_dim}")
        if (2 * self.embed_dim) % self.camera_num_heads:
            bad(f"2*embed_dim is not divisible by camera_num_heads={self.camera_num_heads}")
        if self.patch_embed == "dinov2" and self.embed_dim % self.vit_num_heads:
            bad(f"embed_dim={self.embed_dim} is not divisible by vit_num_heads={self.vit_num_heads}")
        if len(self.intermediate_layers) != 4:
            bad(f"intermediate_layers must name 4 blocks, got {self.intermediate_layers}")
        if any(not 0 <= i < self.depth for i in self.intermediate_layers):
            bad(f"intermediate_layers {self.intermediate_layers} fall outside depth={self.depth}")
        if list(self.intermediate_layers) != sorted(set(self.intermediate_layers)):
            bad(f"intermediate_layers {self.intermediate_layers} must be strictly increasing")
        if self.default_window is not None and self.default_window < 1:
            bad(f"default_window={self.default_window} must be >= 1 or None")
        if self.img_size % self.patch_size:
            bad(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ZipMapConfig:
        """Build a config from plain data; unknown keys and wrongly typed values are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"ZipMapConfig: unknown key(s) {unknown}")
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for name, value in data.items():
            default = getattr(defaults, name)
            if isinstance(default, tuple) and isinstance(value, (list, tuple)):
                value = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"ZipMapConfig: {name} must be a bool, got {value!r}")
            elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif default is not None and not isinstance(value, type(default)):
                raise ConfigError(
                    f"ZipMapConfig: {name} must be {type(default).__name__}, got {value!r}"
                )
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ZipMapConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ZipMapConfig:
        return self.from_dict({**self.to_dict(), **changes})

    # --- derived quantities ---------------------------------------------------------------------
    @property
    def ttt_num_heads(self) -> int:
        return self.embed_dim // self.ttt_head_dim

    @property
    def ttt_hidden_dim(self) -> int:
        return self.ttt_head_dim * self.ttt_inter_multi

    @property
    def patch_start_idx(self) -> int:
        """Tokens per frame before the patch tokens: one camera token plus the registers."""
        return 1 + self.num_register_tokens


_OFFICIAL = ZipMapConfig()

# Small structure-preserving sizes for CPU work and tests. "small" is the bundled CPU model's
# size class; "tiny" is for unit tests (a forward pass takes milliseconds).
_SMALL = dict(
    embed_dim=256, num_heads=4, depth=8, patch_embed="conv", intermediate_layers=(1, 3, 5, 7),
    ttt_head_dim=256, camera_num_heads=4, camera_trunk_depth=2, dpt_features=64,
    dpt_out_channels=(32, 64, 128, 128),
)
_TINY = dict(
    embed_dim=32, num_heads=2, depth=4, patch_embed="conv", intermediate_layers=(0, 1, 2, 3),
    ttt_head_dim=32, camera_num_heads=2, camera_trunk_depth=1, camera_iterations=2,
    dpt_features=16, dpt_out_channels=(8, 16, 32, 32), img_size=56,
)

# The bundled CPU model (trained on generated city blocks): ~10 M parameters, reference-view tokens
# (the first frame anchors the coordinate frame), 168-pixel-wide inputs.
_CITY = dict(
    embed_dim=192, num_heads=3, depth=6, patch_embed="conv", intermediate_layers=(1, 2, 4, 5),
    ttt_head_dim=192, camera_num_heads=3, camera_trunk_depth=2, dpt_features=64,
    dpt_out_channels=(48, 96, 192, 192), img_size=168, affine_invariant=False,
)

PRESETS: dict[str, ZipMapConfig] = {
    "main": _OFFICIAL,
    "ref_view": _OFFICIAL.replace(affine_invariant=False),
    "streaming": _OFFICIAL.replace(camera_head="mlp", default_window=1),
    "state_query": _OFFICIAL.replace(affine_invariant=False, enable_nvs=True),
    "small": _OFFICIAL.replace(**_SMALL),
    "small_streaming": _OFFICIAL.replace(**_SMALL, camera_head="mlp", default_window=1),
    "small_state_query": _OFFICIAL.replace(**_SMALL, affine_invariant=False, enable_nvs=True),
    "city": _OFFICIAL.replace(**_CITY),
    "tiny": _OFFICIAL.replace(**_TINY),
    "tiny_ref_view": _OFFICIAL.replace(**_TINY, affine_invariant=False),
    "tiny_streaming": _OFFICIAL.replace(**_TINY, camera_head="mlp", default_window=1),
    "tiny_state_query": _OFFICIAL.replace(**_TINY, affine_invariant=False, enable_nvs=True),
}

# The published checkpoint files and the preset each one loads into.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "main": "checkpoint_aff_inv.pt",
    "ref_view": "checkpoint_with_ref_view.pt",
    "streaming": "checkpoint_online.pt",
    "state_query": "checkpoint_state_query.pt",
}


def get_config(name: str, **overrides: Any) -> ZipMapConfig:
    """Return the named preset, with optional field overrides."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown ZipMap preset {name!r}; known: {sorted(PRESETS)}") from None
    return cfg.replace(**overrides) if overrides else cfg


__all__ = ["ZipMapConfig", "PRESETS", "OFFICIAL_CHECKPOINTS", "get_config"]
