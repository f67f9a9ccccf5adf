"""How fast the command line answers: ``zipmap --help``, every ``zipmap CMD --help`` and parameter errors.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]

Each case runs the installed ``zipmap`` entry point in a fresh process (as a user types it) and reports
the median wall time over ``--repeats`` runs. Targets (issue 16): help < 1 s, parameter errors < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    ["--help"],
    *[[cmd, "--help"] for cmd in ("reconstruct", "batch", "evaluate", "demo", "predict", "manifest", "generate",
                                  "deploy", "verify")],
    ["reconstruct", "SRC", "OUT", "--voxel-size", "-1"],
    ["reconstruct", "SRC", "OUT", "--weights", "/nowhere/checkpoint_aff_inv.pt"],
    ["batch", "manifest.csv", "OUT", "--max-voxels", "0"],
    ["reconstruct", "SRC", "OUT", "--preset", "huge"],
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    zipmap = str(Path(sys.executable).parent / "zipmap")
    for case in CASES:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = subprocess.run([zipmap, *case], capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
        first = (result.stderr.strip().splitlines() or [""])[0][:70]
        print(f"{statistics.median(times):6.3f} s  rc {result.returncode}  zipmap {' '.join(case)}"
              + (f"   -> {first}" if result.returncode else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
