"""Weights I/O: official ``.pt`` checkpoints, our ``.safetensors`` + JSON, from any fsspec URL.

Loading is strict: every entry the network expects must be present with the exact shape, and
nothing else may be there; a violation raises :class:`errors.CheckpointError` naming the keys. The
network is built on the ``meta`` device and the checkpoint's tensors are assigned to it after a
cast, so an official 1.37 B-parameter checkpoint never exists twice in memory.

- Official checkpoints (``checkpoint_aff_inv.pt`` ...): ``torch.load(weights_only=True)``; a bare
  state dict, or one under ``"model"``; ``use_ema=True`` takes the ``"ema"`` entries (over
  ``"model"`` for any entry EMA does not track, such as frozen parameters).
- Our checkpoints: ``name.safetensors`` plus ``name.json`` holding the :class:`ZipMapConfig`.
- URLs: local paths, ``file://``, ``s3://``, ``https://`` ... Remote files are copied once into a
  local cache (``$ZIPMAP_CACHE`` or ``~/.cache/zipmap``) and memory-mapped from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from errors import CheckpointError, ConfigError

from .config import ZipMapConfig, get_config
from .zipmap import ZipMap

CONFIG_METADATA_KEY = "zipmap_config"
BUNDLED_DIR = Path(__file__).resolve().parent / "checkpoints"
BUNDLED_NAME = "zipmap_city_small.safetensors"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def cache_dir() -> Path:
    return Path(os.environ.get("ZIPMAP_CACHE", Path.home() / ".cache" / "zipmap"))


def local_copy(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """A local path holding the file at ``url``; remote files are cached (skipped when a copy
    of the same size is already there) and written atomically."""
    if _is_local(url):
        path = url[len("file://"):] if url.startswith("file://") else url
        if not os.path.exists(path):
            raise CheckpointError(f"{url}: checkpoint file not found")
        return path
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        size = fs.size(path)
    except FileNotFoundError:
        raise CheckpointError(f"{url}: checkpoint file not found") from None
    except Exception as exc:  # network, credentials, unknown protocol
        raise CheckpointError(f"{url}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    target = cache_dir() / "checkpoints" / hashlib.sha1(url.encode()).hexdigest()[:16] / Path(path).name
    if target.exists() and target.stat().st_size == size:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        fs.get(path, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return str(target)


def read_state_dict(url: str, use_ema: bool = False, storage_options: Mapping[str, Any] | None = None,
                    ) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint (``.safetensors`` or a torch ``.pt``) without a network."""
    path = local_copy(url, storage_options)
    if path.endswith(".safetensors"):
        if use_ema:
            raise CheckpointError(f"{url}: safetensors checkpoints hold one set of weights; no EMA")
        try:
            return load_file(path)
        except Exception as exc:
            raise CheckpointError(f"{url}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{url}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{url}: expected a state dict, found {type(obj).__name__}")
    if use_ema:
        if not isinstance(obj.get("ema"), Mapping):
            raise CheckpointError(f"{url}: EMA weights requested but the checkpoint has no 'ema' entry")
        base = obj.get("model") if isinstance(obj.get("model"), Mapping) else {}
        return {**base, **obj["ema"]}
    if isinstance(obj.get("model"), Mapping):
        return dict(obj["model"])
    return dict(obj)


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming the missing, unexpected and mis-shaped entries."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [f"{k!r} (expected shape {expected[k]})" for k in sorted(set(expected) - set(state_dict))]
    unexpected = [repr(k) for k in sorted(set(state_dict) - set(expected))]
    mismatched = []
    for key in sorted(set(expected) & set(state_dict)):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key!r} holds a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != expected[key]:
            mismatched.append(f"{key!r} has shape {tuple(value.shape)}, expected {expected[key]}")
    groups = [("missing key", missing), ("unexpected key", unexpected), ("wrong entry", mismatched)]
    parts = []
    for label, items in groups:
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}{'s' if len(items) > 1 else ''}: {', '.join(items[:5])}{more}")
    if parts:
        raise CheckpointError(f"{source}: checkpoint does not match the network: " + "; ".join(parts))


def load_state_dict_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                         device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """Strictly check, cast floating tensors to ``dtype``, and assign them (meta models welcome)."""
    check_state_dict(model, state_dict, source)
    cast = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in state_dict.items()
    }
    model.load_state_dict(cast, strict=True, assign=True)


def read_config(url: str, storage_options: Mapping[str, Any] | None = None) -> ZipMapConfig:
    """The config of one of our checkpoints: ``name.json`` beside it, else safetensors metadata."""
    stem = url[: -len(".safetensors")] if url.endswith(".safetensors") else url
    json_url = stem + ".json"
    try:
        with fsspec.open(json_url, "r", **(storage_options or {})) as f:
            return ZipMapConfig.from_dict(json.load(f))
    except FileNotFoundError:
        pass
    if url.endswith(".safetensors"):
        with safe_open(local_copy(url, storage_options), "pt") as f:
            meta = f.metadata() or {}
        if CONFIG_METADATA_KEY in meta:
            return ZipMapConfig.from_json(meta[CONFIG_METADATA_KEY])
    raise ConfigError(f"{url}: no config given and no {json_url} beside the checkpoint; pass config=")


def load_zipmap(
    url: str,
    config: ZipMapConfig | str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> ZipMap:
    """Build a :class:`ZipMap` from a checkpoint URL, in eval mode.

    ``config`` is a :class:`ZipMapConfig`, a preset name (``"main"``, ``"ref_view"``,
    ``"streaming"``, ``"state_query"``, ...) or ``None`` to read our JSON config beside the file.
    """
    if config is None:
        config = read_config(url, storage_options)
    elif isinstance(config, str):
        config = get_config(config)
    state_dict = read_state_dict(url, use_ema=use_ema, storage_options=storage_options)
    with torch.device("meta"):
        model = ZipMap(config)
    load_state_dict_into(model, state_dict, url, device=device, dtype=dtype)
    del state_dict
    return model.eval()


def save_checkpoint(model: ZipMap, url: str, storage_options: Mapping[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> str:
    """Write ``model`` as ``url`` (``.safetensors``) plus the JSON config beside it; returns ``url``.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors at lower precision to halve the file;
    loading casts them back to the requested compute dtype.
    """
    if not url.endswith(".safetensors"):
        raise CheckpointError(f"{url}: our checkpoints are .safetensors files")
    cfg_json = model.cfg.to_json()
    tensors = {k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    payload = safetensors_bytes(tensors, metadata={CONFIG_METADATA_KEY: cfg_json})
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path[: -len(".safetensors")] + ".json", cfg_json.encode())
    fs.pipe_file(path, payload)
    return url


_SHA256_CACHE: dict[tuple[str, int, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """sha256 of a local file, remembered per process while its inode, size and mtime stay the same
    (a worker reconstructing thousands of collections hashes its checkpoint once, not per run)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def bundled_checkpoint() -> str:
    """Path of the checkpoint shipped inside the package, after checking its sha256."""
    path = BUNDLED_DIR / BUNDLED_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: the bundled checkpoint is not in this installation")
    expected_file = path.with_suffix(".sha256")
    if expected_file.exists():
        expected = expected_file.read_text().split()[0]
        actual = sha256_of(path)
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 {actual} does not match {expected_file.name} ({expected})")
    return str(path)
