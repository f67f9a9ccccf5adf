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

import functools
import hashlib
import json
import os
import posixpath
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from errors import CheckpointError

from .config import OFFICIAL_CHECKPOINTS, PRESETS, ZipMapConfig, get_config
from .zipmap import ZipMap

CONFIG_METADATA_KEY = "zipmap_config"
BUNDLED_DIR = Path(__file__).resolve().parent / "checkpoints"
BUNDLED_NAME = "zipmap_city_small.safetensors"
OFFICIAL_FILE_VARIANTS = {file: variant for variant, file in OFFICIAL_CHECKPOINTS.items()}


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def cache_dir() -> Path:
    return Path(os.environ.get("ZIPMAP_CACHE", Path.home() / ".cache" / "zipmap"))


def local_copy(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """A local path holding the file at ``url``; remote files are cached (skipped when a copy
    of the same size is already there) and written atomically. A missing or unreadable checkpoint
    raises :class:`CheckpointError`; a remote one that does not answer (timeouts, lost connections,
    5xx, throttling) :class:`errors.TransientError`, which batches retry."""
    from errors import describe, io_error, is_transient, scrub  # the one classification of I/O faults

    if _is_local(url):
        path = url[len("file://"):] if url.startswith("file://") else url
        if not os.path.exists(path):
            raise CheckpointError(f"{url}: checkpoint file not found")
        return path
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        size = fs.size(path)
    except FileNotFoundError:
        raise CheckpointError(scrub(f"{url}: checkpoint file not found")) from None
    except Exception as exc:  # network (transient: retried by batches), credentials, unknown protocol
        if is_transient(exc):
            raise io_error(exc, url, "checkpoint did not answer") from exc
        raise CheckpointError(scrub(f"{url}: cannot read checkpoint ({describe(exc)})")) from exc
    target = cache_dir() / "checkpoints" / hashlib.sha1(url.encode()).hexdigest()[:16] / Path(path).name
    if target.exists() and target.stat().st_size == size:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        try:
            fs.get(path, tmp)
        except Exception as exc:  # a download cut short is worth a retry; anything else is the checkpoint's
            if is_transient(exc):
                raise io_error(exc, url, "checkpoint download failed") from exc
            raise CheckpointError(scrub(f"{url}: cannot read checkpoint ({describe(exc)})")) from exc
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


def read_config(url: str, storage_options: Mapping[str, Any] | None = None) -> ZipMapConfig | None:
    """The config of one of our checkpoints: ``name.json`` beside it, else safetensors metadata; None
    when neither is there (an official ``.pt``: :func:`recognise_variant` decides from the tensors)."""
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
    return None


# --- which variant a state dict is -----------------------------------------------------------------
@functools.cache
def expected_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of a preset's network with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = ZipMap(get_config(preset))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    return {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else None) for k, v in state_dict.items()}


def _differences(expected: Mapping[str, tuple], found: Mapping[str, tuple | None]) -> tuple[list, list, list]:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if found[k] != expected[k])
    return missing, extra, wrong


def _listed(label: str, keys: list[str], limit: int = 4) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} {label}{'s' if len(keys) > 1 else ''} ({', '.join(keys[:limit])}{more})"


def recognise_variant(state_dict: Mapping[str, Any], source: str) -> str:
    """The preset whose network has exactly the state dict's keys and shapes.

    ``main`` and ``ref_view`` (and their small sizes) have identical keys and shapes: between those the
    published file name decides (``checkpoint_aff_inv.pt`` -> ``main``, ``checkpoint_with_ref_view.pt``
    -> ``ref_view``); where nothing decides, :class:`CheckpointError` asks for a preset. A state dict
    that matches no preset raises naming what is missing or extra against the closest one."""
    found = _shapes(state_dict)
    scored = []
    for name in PRESETS:
        missing, extra, wrong = _differences(expected_shapes(name), found)
        scored.append((len(missing) + len(extra) + len(wrong), name, missing, extra, wrong))
    matches = [name for n, name, *_ in scored if n == 0]
    if len(matches) == 1:
        return matches[0]
    if matches:
        by_file = OFFICIAL_FILE_VARIANTS.get(posixpath.basename(source.split("?")[0]))
        if by_file in matches:
            return by_file
        raise CheckpointError(f"{source}: the weights fit presets {', '.join(matches)} equally; pass --preset "
                              f"(one of {', '.join(matches)})")
    n, name, missing, extra, wrong = min(scored, key=lambda s: s[0])
    parts = [_listed("missing key", missing), _listed("extra key", extra),
             _listed("key of another shape", [f"{k} {found[k]} not {expected_shapes(name)[k]}" for k in wrong])]
    detail = "; ".join(p for p, keys in zip(parts, (missing, extra, wrong)) if keys)
    raise CheckpointError(f"{source}: matches no ZipMap variant; closest is {name!r}: {detail}")


def preset_of(cfg: ZipMapConfig) -> str | None:
    """The name of the preset ``cfg`` equals, or None for a custom configuration."""
    return next((name for name, preset in PRESETS.items() if preset == cfg), None)


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
    ``"streaming"``, ``"state_query"``, ...) or ``None``: our JSON config beside the file (or in the
    safetensors metadata), else the variant recognised from the tensors (:func:`recognise_variant`).
    ``model.variant`` names the preset the network was built from (``"custom"`` for other configs).
    """
    state_dict = read_state_dict(url, use_ema=use_ema, storage_options=storage_options)
    variant = config if isinstance(config, str) else None
    if config is None:
        config = read_config(url, storage_options)
        if config is None:
            variant = recognise_variant(state_dict, url)
            config = get_config(variant)
    if isinstance(config, str):
        config = get_config(config)
    with torch.device("meta"):
        model = ZipMap(config)
    load_state_dict_into(model, state_dict, url, device=device, dtype=dtype)
    del state_dict
    model.variant = variant or preset_of(config) or "custom"
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
