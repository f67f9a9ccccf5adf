"""Prove the network equals the published reference on a golden fixture.

    python -m model.verify_reference FIXTURE.npz [--tolerance 1e-5] [--workdir DIR]

A fixture (see ``shared/reference/README.md`` in the project's shared data) holds a case name
(``main``, ``ref_view``, ``streaming`` or ``state_query``), a seed, input images (any frame count,
any size that is a multiple of 14) and the reference implementation's outputs for weights filled
by a seeded rule. This command:

1. builds that variant in float64 with the Newton-Schulz iteration kept in float64;
2. fills every state-dict entry by the rule and writes the weights to a temporary safetensors
   file, then loads it through :func:`model.weights.load_zipmap`, the loader users call for
   official checkpoints (strict names and shapes);
3. runs the fixture's inputs in the fixture's mode(s): offline; streaming in windows, plus the
   same frames split over two calls with the state carried; state query plus rendering the same
   queries later from the stored state alone;
4. prints one line per stored output with its relative error ``||ours - ref|| / ||ref||``.

The exit status is 0 only if every stored output is within the tolerance (1e-5).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .config import ZipMapConfig, get_config
from .weights import load_zipmap
from .zipmap import ZipMap

INPUT_KEYS = {"case", "seed", "images", "query_rays", "split.at", "window"}
CASES = ("main", "ref_view", "streaming", "state_query")


def fill_value(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The reference fixtures' deterministic weight for one state-dict entry (float32)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()) ^ seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    leaf = key.rsplit(".", 1)[-1]
    f32 = np.float32
    if "token" in leaf or leaf == "pos_embed":
        return f32(0.02) * x
    if len(shape) >= 2 and leaf in ("w0", "w1", "w2"):
        return x * f32(math.sqrt(2 / shape[1]))
    if len(shape) >= 2:
        return x / f32(math.sqrt(math.prod(shape[1:])))
    if leaf == "gamma":
        return f32(0.1) + f32(0.01) * x
    if leaf == "weight":
        return f32(1) + f32(0.05) * x
    return f32(0.02) * x


def write_filled_checkpoint(cfg: ZipMapConfig, seed: int, path: Path) -> None:
    """Fill every entry of the network's state dict by the rule and save it as safetensors."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZipMap(cfg).state_dict().items()}
    tensors = {k: torch.from_numpy(fill_value(k, s, seed)) for k, s in shapes.items()}
    save_file(tensors, str(path))


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return math.inf
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(ours - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def state_summaries(state, fixture) -> dict[str, np.ndarray]:
    """``state.i.wN.{norm,proj}`` for the entries the fixture stores (``proj = W @ vec``)."""
    out = {}
    for key in fixture.files:
        if not (key.startswith("state.") and key.endswith(".vec")):
            continue
        _, layer, name, _ = key.split(".")
        w = state.layers[int(layer)][("w0", "w1", "w2").index(name)].double()
        vec = torch.from_numpy(np.asarray(fixture[key], dtype=np.float64))
        out[f"state.{layer}.{name}.norm"] = w.norm().reshape(1).numpy()
        out[f"state.{layer}.{name}.proj"] = (w @ vec).numpy()
    return out


def head_outputs(out: dict, prefix: str = "") -> dict[str, np.ndarray]:
    keys = ("pose_enc", "depth", "depth_conf", "local_points", "nvs_pred", "nvs_depth_conf")
    return {prefix + k: out[k].detach().numpy() for k in keys if out.get(k) is not None}


def run_fixture(model: ZipMap, fixture) -> dict[str, np.ndarray]:
    """Every output the fixture's mode(s) produce, under the fixture's names."""
    case = str(fixture["case"])
    images = torch.from_numpy(np.asarray(fixture["images"], dtype=np.float64))
    ours: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if case == "streaming":
            window = int(fixture["window"]) if "window" in fixture.files else model.cfg.default_window
            online = model(images, window=window)
            ours.update(head_outputs(online, "online."))
            ours.update(state_summaries(online["state"], fixture))
            if "split.at" in fixture.files:
                at = int(fixture["split.at"])
                first = model(images[:, :at], window=window)
                second = model(images[:, at:], state=first["state"], window=window)
                a, b = head_outputs(first), head_outputs(second)
                for k in a:
                    ours[f"split.{k}"] = np.concatenate([a[k], b[k]], axis=1)
        elif case == "state_query":
            rays = torch.from_numpy(np.asarray(fixture["query_rays"], dtype=np.float64))
            out = model(images, query_rays=rays)
            ours.update(head_outputs(out))
            ours.update(state_summaries(out["state"], fixture))
            ours.update(head_outputs(model.render(out["state"], rays), "render."))
        else:
            out = model(images)
            ours.update(head_outputs(out))
            ours.update(state_summaries(out["state"], fixture))
    return ours


def verify(fixture_path: str, tolerance: float = 1e-5, workdir: str | None = None, preset: str | None = None,
           out=sys.stdout) -> bool:
    """Check one fixture; ``preset`` replaces the case's official-size preset (same mode, e.g.
    ``tiny_streaming`` for a fixture made at a small size)."""
    fixture = np.load(fixture_path)
    case, seed = str(fixture["case"]), int(fixture["seed"])
    if case not in CASES:
        raise SystemExit(f"{fixture_path}: unknown case {case!r}; expected one of {CASES}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="zipmap-verify-") as tmp:
        ckpt = Path(tmp) / f"{case}-seed{seed}.safetensors"
        cfg = get_config(preset or case, ns_dtype="input")
        write_filled_checkpoint(cfg, seed, ckpt)
        model = load_zipmap(str(ckpt), cfg, dtype=torch.float64)
    t_build = time.perf_counter() - t0
    ours = run_fixture(model, fixture)
    t_run = time.perf_counter() - t0 - t_build

    stored = [k for k in fixture.files if k not in INPUT_KEYS and not k.endswith(".vec")]
    ok = True
    print(f"# {fixture_path}: case={case} seed={seed} images={tuple(fixture['images'].shape)} "
          f"(build {t_build:.1f}s, run {t_run:.1f}s)", file=out)
    for key in stored:
        if key not in ours:
            print(f"{key:<28s} MISSING (no output of ours for this stored entry)  FAIL", file=out)
            ok = False
            continue
        err = relative_error(ours[key], fixture[key])
        passed = err <= tolerance
        ok &= passed
        print(f"{key:<28s} {err:.3e}  {'ok' if passed else 'FAIL'}", file=out)
    print(f"# {'PASS' if ok else 'FAIL'}: {len(stored)} outputs, tolerance {tolerance:g}", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.verify_reference", description=__doc__.split("\n")[0])
    parser.add_argument("fixture", help="path to a reference fixture .npz")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--workdir", default=None, help="where the temporary filled checkpoint goes")
    parser.add_argument("--preset", default=None,
                        help="build this preset instead of the case's official size (same mode)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    return 0 if verify(args.fixture, args.tolerance, args.workdir, args.preset) else 1


if __name__ == "__main__":
    sys.exit(main())
