"""Summarise a training log (``log.csv`` of ``python -m model.training``) as a markdown table.

    python benchmarks/learning_curve.py runs/city/log.csv [--bucket 200]

One row per bucket of steps: mean total loss and mean of each term over the logged steps in it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log")
    p.add_argument("--bucket", type=int, default=200)
    args = p.parse_args(argv)
    rows = list(csv.DictReader(open(args.log)))
    buckets: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        buckets[(int(r["step"]) - 1) // args.bucket].append(r)
    keys = ("loss", "camera", "depth", "points")
    print("| steps | wall h | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for b in sorted(buckets):
        rs = buckets[b]
        means = [sum(float(r[k]) for r in rs) / len(rs) for k in keys]
        wall = float(rs[-1]["wall_s"]) / 3600
        print(f"| {b * args.bucket + 1}-{(b + 1) * args.bucket} | {wall:.2f} | "
              + " | ".join(f"{m:.3f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
