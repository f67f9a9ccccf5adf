"""ZipMap: feed-forward 3-D reconstruction in one linear-time pass (Jin et al., arXiv 2603.04385).

Composes the aggregator (:mod:`model.aggregator`) with the camera head, the DPT heads for depth and
local points, and, in the state-query variant, the RGB-D head that answers ray queries. Attribute
names follow the published state dicts (``aggregator``, ``camera_head`` / ``camera_mlp_head``,
``depth_head``, ``local_point_head``, ``nvs_head``), so checkpoints load with no renaming.

Conventions (see README "Camera convention"): images ``[B, S, 3, H, W]`` in [0, 1] with H and W
multiples of the patch size; cameras are OpenCV (x right, y down, z forward), camera-from-world,
intrinsics in pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from errors import InputError

from .aggregator import Aggregator
from .config import ZipMapConfig
from .heads.camera import CameraHead, CameraMLPHead, ReferenceMatch
from .heads.dpt import DPTHead
from .state import SceneState


class ZipMap(nn.Module):
    def __init__(self, cfg: ZipMapConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ZipMapConfig()
        dim = 2 * cfg.embed_dim  # heads read frame and global outputs side by side
        self.aggregator = Aggregator(cfg)
        self.camera_head = self.camera_mlp_head = None
        if cfg.camera_head == "iterative":
            self.camera_head = CameraHead(dim, cfg.camera_trunk_depth, cfg.camera_num_heads,
                                          cfg.mlp_ratio, cfg.init_values, cfg.camera_iterations)
        elif cfg.camera_head == "mlp":
            self.camera_mlp_head = CameraMLPHead(dim)
        self.camera_ref_match = ReferenceMatch(dim) if cfg.camera_ref_match else None
        dpt = dict(patch_size=cfg.patch_size, features=cfg.dpt_features,
                   out_channels=cfg.dpt_out_channels, frames_chunk=cfg.dpt_frames_chunk)
        self.depth_head = DPTHead(dim, 2, "exp", "expp1", **dpt) if cfg.enable_depth else None
        self.local_point_head = DPTHead(dim, 3, "xy_exp", "none", **dpt) if cfg.enable_local_points else None
        self.nvs_head = DPTHead(dim, 5, "sigmoid_exp", "expp1", **dpt) if cfg.enable_nvs else None
        # bf16 autocast for the trunk on CUDA (the heads always run in float32)
        self.autocast_dtype: torch.dtype | None = torch.bfloat16

    # ------------------------------------------------------------------------------------------
    def _check_input(self, name: str, x: torch.Tensor, channels: int) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(0)
        if x.dim() != 5 or x.shape[2] != channels:
            raise InputError(f"{name}: expected [B, S, {channels}, H, W], got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        p = self.cfg.patch_size
        if H % p or W % p or H == 0 or W == 0:
            raise InputError(f"{name}: height and width must be positive multiples of {p}, got {H}x{W}")
        if not torch.is_floating_point(x):
            raise InputError(f"{name}: expected a floating-point tensor, got {x.dtype}")
        return x

    def _trunk(self, images, query_rays, state, window, reference_first):
        device_type = (images if images is not None else query_rays).device.type
        param_dtype = next(self.parameters()).dtype
        use_amp = device_type == "cuda" and self.autocast_dtype is not None and param_dtype == torch.float32
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype or torch.bfloat16, enabled=use_amp):
            layers, fast = self.aggregator(images, query_rays, state, window, reference_first)
        if use_amp:
            layers = [t.float() for t in layers]
        return layers, fast

    def forward(
        self,
        images: torch.Tensor,
        query_rays: torch.Tensor | None = None,
        state: SceneState | None = None,
        window: int | None = None,
    ) -> dict:
        """Reconstruct a collection (and optionally answer ray queries in the same pass).

        Args:
            images: ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``) in [0, 1].
            query_rays: optional ``[B, T, 9, H, W]`` Plücker ray maps of views to synthesise
                (state-query variant): the state is updated on the images only and then applied to
                images and queries together.
            state: a :class:`SceneState` to continue from (streaming: frames arriving over several
                calls). Without it the network starts from its learned initial fast weights.
            window: frames per TTT window. ``None`` takes ``cfg.default_window`` (1 for the
                streaming variant, offline otherwise); ``0`` forces bidirectional offline.

        Returns a dict:
            ``pose_enc`` ``[B, S, 9]`` (last refinement) and ``pose_enc_list``;
            ``depth`` ``[B, S, H, W, 1]``, ``depth_conf`` ``[B, S, H, W]``;
            ``local_points`` ``[B, S, H, W, 3]`` (camera frame);
            ``nvs_pred`` ``[B, T, H, W, 4]`` (RGB, depth) and ``nvs_depth_conf`` ``[B, T, H, W]``
            when queries were given; ``state``: the :class:`SceneState` after this call.
        """
        images = self._check_input("images", images, 3)
        if query_rays is not None:
            query_rays = self._check_input("query_rays", query_rays, self.cfg.nvs_ray_dim)
            if query_rays.shape[-2:] != images.shape[-2:] or query_rays.shape[0] != images.shape[0]:
                raise InputError(f"query_rays {tuple(query_rays.shape)} do not match images {tuple(images.shape)}")
            if self.nvs_head is None:
                raise InputError("this network has no ray-query head (enable_nvs=False)")
        window = self.cfg.default_window if window is None else (window or None)
        fast_in = state.layers if state is not None else None
        layers, fast = self._trunk(images, query_rays, fast_in, window, reference_first=state is None)
        S = images.shape[1]
        out = self._decode([t[:, :S] for t in layers], images.shape[-2:], has_reference=state is None)
        if query_rays is not None:
            out.update(self._decode_queries([t[:, S:] for t in layers], images.shape[-2:]))
        out["state"] = SceneState(tuple(fast), images.shape[0]) if fast is not None else None
        return out

    @torch.no_grad()
    def render(self, state: SceneState, query_rays: torch.Tensor, chunk: int = 50) -> dict:
        """Answer ray queries ``[B, T, 9, H, W]`` from a stored state alone.

        The cost depends on the number of queries and the network, never on how many images
        were zipped into ``state``. Queries are processed ``chunk`` views at a time.
        """
        if self.nvs_head is None:
            raise InputError("this network has no ray-query head (enable_nvs=False)")
        query_rays = self._check_input("query_rays", query_rays, self.cfg.nvs_ray_dim)
        preds, confs = [], []
        for t0 in range(0, query_rays.shape[1], chunk):
            rays = query_rays[:, t0:t0 + chunk]
            layers, _ = self._trunk(None, rays, state.layers, None, False)
            out = self._decode_queries(layers, rays.shape[-2:])
            preds.append(out["nvs_pred"])
            confs.append(out["nvs_depth_conf"])
        return {"nvs_pred": torch.cat(preds, dim=1), "nvs_depth_conf": torch.cat(confs, dim=1)}

    # ------------------------------------------------------------------------------------------
    def _decode(self, layers: list[torch.Tensor], hw, has_reference: bool = True) -> dict:
        out: dict = {}
        p0 = self.cfg.patch_start_idx
        with torch.autocast(device_type=layers[0].device.type, enabled=False):
            camera_tokens = layers[-1][:, :, 0]
            cond = None
            if self.camera_ref_match is not None and has_reference:
                # frame 0 of this call is the reference; a stream continued from a state has none here
                p = self.cfg.patch_size
                cond, out["ref_match_logits"] = self.camera_ref_match(layers[-1][:, :, p0:], hw[0] // p, hw[1] // p)
            if self.camera_head is not None:
                out["pose_enc_list"] = self.camera_head(camera_tokens, cond)
                out["pose_enc"] = out["pose_enc_list"][-1]
            elif self.camera_mlp_head is not None:
                out["pose_enc_list"] = self.camera_mlp_head(camera_tokens if cond is None else camera_tokens + cond)
                out["pose_enc"] = out["pose_enc_list"][-1]
            if self.depth_head is not None:
                out["depth"], out["depth_conf"] = self.depth_head(layers, p0, tuple(hw))
            if self.local_point_head is not None:
                out["local_points"], _ = self.local_point_head(layers, p0, tuple(hw))
        return out

    def _decode_queries(self, layers: list[torch.Tensor], hw) -> dict:
        with torch.autocast(device_type=layers[0].device.type, enabled=False):
            pred, conf = self.nvs_head(layers, self.cfg.patch_start_idx, tuple(hw))
        return {"nvs_pred": pred, "nvs_depth_conf": conf}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
