"""A writer of one output in a process of its own, for tests/storage/test_claims.py (not a test module).

    python tests/storage/claim_writer.py OUT CID RUN_ID [--ttl S] [--wait S] [--then write|hold|die]
                                         [--value V] [--pause S] [--options JSON] [--at EPOCH]

It claims ``OUT/<CID>.zarr`` (storage.claims) and prints one line per step, flushed:

- ``busy <holder run id>`` (exit 3) when another run holds the claim;
- ``claimed <token>``, then per ``--then``:
  - ``write``: begins the store under the claim, writes an int16 array of CHUNKS chunks filled with
    ``--value`` one chunk at a time (``chunk <k>`` after each, then ``--pause`` seconds), and marks the
    store complete (``complete``, exit 0);
  - ``hold``: checks its claim every 20 ms, forever;
  - ``die``: exits at once without releasing (``os._exit``: a killed worker).

Losing the claim prints ``lost: <reason>`` (exit 4); the claim is then released (only removed if it is
still this run's) and ``released`` printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from errors import Busy  # noqa: E402
from storage.claims import ClaimLost, acquire  # noqa: E402
from storage.urls import join  # noqa: E402
from storage.zarr_store import ReconstructionStore, Variable  # noqa: E402

CHUNKS, SIDE = 6, 4  # the array: CHUNKS chunks of SIDE x SIDE


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("cid")
    p.add_argument("run_id")
    p.add_argument("--ttl", type=float, default=30.0)
    p.add_argument("--wait", type=float, default=0.0)
    p.add_argument("--then", choices=("write", "hold", "die"), default="write")
    p.add_argument("--value", type=int, default=1)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--options", default="null")
    p.add_argument("--at", type=float, default=0.0, help="claim at this time (epoch seconds), not at once")
    args = p.parse_args()
    opts = json.loads(args.options)
    time.sleep(max(0.0, args.at - time.time()))
    try:
        claim = acquire(args.out, args.cid, args.run_id, opts, ttl_s=args.ttl, wait_s=args.wait)
    except Busy as exc:
        say(f"busy {exc.holder}")
        return 3
    say(f"claimed {claim.token}")
    if args.then == "die":
        os._exit(0)
    store = ReconstructionStore(join(args.out, f"{args.cid}.zarr"), opts, run_id=args.run_id, claim=claim)
    try:
        if args.then == "hold":
            while True:
                claim.check()
                time.sleep(0.02)
        store.begin({"writer": args.run_id})
        store.write_group("data", {"v": Variable(("k", "i"), None, chunks=(SIDE, SIDE), shape=(CHUNKS * SIDE, SIDE),
                                                 dtype=np.int16, fill_value=-1)})
        for k in range(CHUNKS):
            store.write_regions("data", {"v": ((slice(k * SIDE, (k + 1) * SIDE), slice(0, SIDE)),
                                               np.full((SIDE, SIDE), args.value, np.int16))})
            say(f"chunk {k}")
            time.sleep(args.pause)
        store.complete({"writer": args.run_id})
        say("complete")
        return 0
    except ClaimLost as exc:
        store.fail(str(exc))
        say(f"lost: {exc}")
        return 4
    finally:
        claim.release()
        say("released")


if __name__ == "__main__":
    sys.exit(main())
