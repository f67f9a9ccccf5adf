"""Wall time and peak memory of one forward pass against the number of frames N.

ZipMap (global TTT blocks, linear in N) and the quadratic baseline (the same network with global
softmax attention, VGGT-style) at equal width and depth, side by side in one run.

    python benchmarks/scaling.py --preset small --frames 8 16 32 64 128 256 512 --size 56 56
    python benchmarks/scaling.py --preset main --device cuda --frames 8 ... 1024 --size 294 518

Each (network, N) point runs in a fresh subprocess so that peak memory is its own: on CPU the peak
resident set size above the process's level after the model was built; on CUDA
``torch.cuda.max_memory_allocated``. Time is the median of ``--repeats`` passes after one warm-up
(CUDA: CUDA events). Prints a markdown table with the ratio baseline / ZipMap and the crossover.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(preset: str, mixer: str, frames: int, size: tuple[int, int], device: str, repeats: int) -> dict:
    """One point, in this process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from model import ZipMap, get_config

    torch.manual_seed(0)
    model = ZipMap(get_config(preset, global_mixer=mixer)).to(device).eval()
    images = torch.rand(1, frames, 3, *size, device=device)
    base_rss = _rss_kb()
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
                if i == 1:
                    torch.cuda.reset_peak_memory_stats()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(images)
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end) / 1000
            else:
                t0 = time.perf_counter()
                model(images)
                elapsed = time.perf_counter() - t0
            if i:  # the first pass is warm-up
                times.append(elapsed)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"mixer": mixer, "frames": frames, "seconds": statistics.median(times), "peak_mb": peak_mb,
            "params": sum(p.numel() for p in model.parameters())}


def run_point(args, mixer: str, frames: int) -> dict:
    cmd = [sys.executable, __file__, "--_point", mixer, str(frames), "--preset", args.preset, "--device", args.device,
           "--size", str(args.size[0]), str(args.size[1]), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.point_timeout)
    if proc.returncode:
        return {"mixer": mixer, "frames": frames, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    p.add_argument("--size", type=int, nargs=2, default=[56, 56], metavar=("H", "W"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--point-timeout", type=int, default=1800)
    p.add_argument("--json", default=None, help="also write the raw points here")
    p.add_argument("--_point", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._point:
        mixer, frames = args._point[0], int(args._point[1])
        print(json.dumps(measure(args.preset, mixer, frames, tuple(args.size), args.device, args.repeats)))
        return 0

    rows = []
    for n in args.frames:
        z, b = run_point(args, "ttt", n), run_point(args, "attention", n)
        rows.append((n, z, b))
        print(f"N={n}: zipmap {z.get('seconds', z.get('error'))}  baseline {b.get('seconds', b.get('error'))}",
              file=sys.stderr, flush=True)

    def cell(r, key, fmt):
        return fmt.format(r[key]) if key in r else "failed"

    print(f"\npreset={args.preset} size={args.size[0]}x{args.size[1]} device={args.device} "
          f"machine={platform.machine()} {platform.processor() or ''} python={platform.python_version()}")
    z0, b0 = rows[0][1], rows[0][2]
    if "params" in z0 and "params" in b0:
        print(f"parameters: zipmap {z0['params']:,}, baseline {b0['params']:,}\n")
    print("| N | ZipMap s | ZipMap ms/frame | ZipMap peak MB | baseline s | baseline ms/frame | baseline peak MB "
          "| baseline / ZipMap |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    crossover = None
    for n, z, b in rows:
        ratio = b["seconds"] / z["seconds"] if "seconds" in z and "seconds" in b else None
        if ratio is not None and ratio > 1 and crossover is None:
            crossover = n
        print(f"| {n} | {cell(z, 'seconds', '{:.3f}')} | "
              f"{(1000 * z['seconds'] / n) if 'seconds' in z else float('nan'):.2f} | {cell(z, 'peak_mb', '{:.0f}')} | "
              f"{cell(b, 'seconds', '{:.3f}')} | {(1000 * b['seconds'] / n) if 'seconds' in b else float('nan'):.2f} | "
              f"{cell(b, 'peak_mb', '{:.0f}')} | {f'{ratio:.2f}' if ratio else 'n/a'} |")
    print(f"\ncrossover (first N where the baseline is slower): {crossover}")
    if args.json:
        points = [{"frames": n, "zipmap": z, "baseline": b} for n, z, b in rows]
        Path(args.json).write_text(json.dumps(points, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
