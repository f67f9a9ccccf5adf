"""Dense prediction (DPT) head: four token layers -> a per-pixel map, for depth, points and RGB-D.

References: "Vision Transformers for Dense Prediction" (Ranftl et al., arXiv 2103.13413) in the
form VGGT ships (facebookresearch/vggt ``vggt/heads/dpt_head.py``), which ZipMap reuses. One
class serves every dense output through ``output_dim`` and the activation names:

- depth:        ``output_dim=2``, ``activation="exp"``, ``conf_activation="expp1"``
- local points: ``output_dim=3``, ``activation="xy_exp"``, no confidence
- RGB-D query:  ``output_dim=5``, ``activation="sigmoid_exp"``, ``conf_activation="expp1"``

Two details of the published numerics are kept on purpose: each residual unit adds its input
*after* the ReLU (VGGT's in-place ReLU made the skip path see the activated tensor, and the
checkpoints were trained that way), and the sinusoidal UV position embeddings are float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("exp", "xy_exp", "sigmoid_exp", "sigmoid", "linear")
CONF_ACTIVATIONS = ("expp1", "none")


def uv_grid(width: int, height: int, aspect: float, dtype, device) -> torch.Tensor:
    """Pixel-centre UV coordinates ``[height, width, 2]`` spanning the diagonal-normalised plane."""
    diag = (aspect ** 2 + 1.0) ** 0.5
    sx, sy = aspect / diag, 1.0 / diag
    xs = torch.linspace(-sx * (width - 1) / width, sx * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-sy * (height - 1) / height, sy * (height - 1) / height, height, dtype=dtype, device=device)
    u, v = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([u, v], dim=-1)


def sincos_embed(coords: torch.Tensor, dim: int, omega0: float = 100.0) -> torch.Tensor:
    """Sine/cosine embedding of 1-D coordinates ``[M]`` -> ``[M, dim]`` (float32)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=coords.device) / (dim / 2.0)
    omega = 1.0 / omega0 ** omega
    angles = coords.reshape(-1, 1).to(torch.float64) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def add_uv_embedding(x: torch.Tensor, aspect: float, ratio: float = 0.1) -> torch.Tensor:
    """Add a 2-D sinusoidal UV position embedding to a feature map ``[N, C, h, w]``."""
    N, C, h, w = x.shape
    grid = uv_grid(w, h, aspect, x.dtype, x.device).reshape(-1, 2)
    emb = torch.cat([sincos_embed(grid[:, 0], C // 2), sincos_embed(grid[:, 1], C // 2)], dim=-1)
    emb = (emb * ratio).reshape(h, w, C).permute(2, 0, 1)
    return x + emb.unsqueeze(0)


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=True)


def activate(out: torch.Tensor, activation: str, conf_activation: str):
    """``[N, K, H, W]`` raw maps -> (values ``[N, H, W, K']``, confidence ``[N, H, W]`` or None)."""
    fmap = out.permute(0, 2, 3, 1)
    if conf_activation == "none":
        values, conf = fmap, None
    else:
        values, conf = fmap[..., :-1], 1 + fmap[..., -1].exp()
    if activation == "exp":
        values = values.exp()
    elif activation == "xy_exp":  # camera-frame points: (x/z, y/z, log z) -> (x, y, z)
        z = values[..., 2:3].exp()
        values = torch.cat([values[..., :2] * z, z], dim=-1)
    elif activation == "sigmoid_exp":  # RGB in [0, 1] then depth
        values = torch.cat([values[..., :3].sigmoid(), values[..., 3:4].exp()], dim=-1)
    elif activation == "sigmoid":
        values = values.sigmoid()
    elif activation != "linear":
        raise ValueError(f"unknown DPT activation {activation!r}")
    return values, conf


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)  # the skip path carries the activated input (see module docstring)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(upsample(x, size))


class DPTHead(nn.Module):
    def __init__(self, dim_in: int, output_dim: int, activation: str, conf_activation: str,
                 patch_size: int = 14, features: int = 256, out_channels=(256, 512, 1024, 1024),
                 frames_chunk: int = 8):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown DPT activation {activation!r}; known {ACTIVATIONS}")
        if conf_activation not in CONF_ACTIVATIONS:
            raise ValueError(f"unknown confidence activation {conf_activation!r}; known {CONF_ACTIVATIONS}")
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.frames_chunk = frames_chunk
        oc = out_channels
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),  # x4
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),  # x2
            nn.Identity(),  # x1
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),  # x1/2
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FusionBlock(features)
        self.scratch.refinenet2 = FusionBlock(features)
        self.scratch.refinenet3 = FusionBlock(features)
        self.scratch.refinenet4 = FusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, 1)
        )

    def forward(self, layers: list[torch.Tensor], patch_start_idx: int, image_hw: tuple[int, int]):
        """``layers``: four ``[B, S, P, C]`` token maps -> (values ``[B, S, H, W, K]``, conf ``[B, S, H, W]``)."""
        B, S = layers[0].shape[:2]
        values, confs = [], []
        for s0 in range(0, S, self.frames_chunk or S):
            s1 = min(S, s0 + (self.frames_chunk or S))
            v, c = self._forward_frames([t[:, s0:s1] for t in layers], patch_start_idx, image_hw)
            values.append(v)
            confs.append(c)
        value = torch.cat(values, dim=1)
        conf = torch.cat(confs, dim=1) if confs[0] is not None else None
        return value, conf

    def _forward_frames(self, layers, patch_start_idx, image_hw):
        B, S = layers[0].shape[:2]
        H, W = image_hw
        ph, pw = H // self.patch_size, W // self.patch_size
        feats = []
        for i, tokens in enumerate(layers):
            x = self.norm(tokens[:, :, patch_start_idx:].reshape(B * S, ph * pw, -1))
            x = x.transpose(1, 2).reshape(B * S, -1, ph, pw)
            x = add_uv_embedding(self.projects[i](x), W / H)
            feats.append(self.resize_layers[i](x))
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        x = self.scratch.refinenet4(l4, size=l3.shape[2:])
        x = self.scratch.refinenet3(x, l3, size=l2.shape[2:])
        x = self.scratch.refinenet2(x, l2, size=l1.shape[2:])
        x = self.scratch.refinenet1(x, l1)
        x = self.scratch.output_conv1(x)
        x = add_uv_embedding(upsample(x, (ph * self.patch_size, pw * self.patch_size)), W / H)
        values, conf = activate(self.scratch.output_conv2(x), self.activation, self.conf_activation)
        values = values.reshape(B, S, *values.shape[1:])
        return values, (conf.reshape(B, S, *conf.shape[1:]) if conf is not None else None)
