"""CLI: render one synthetic collection, e.g. ``python -m model.synthetic out/ --seed 0 --path street``."""

from __future__ import annotations

import argparse

from errors import InputError

from .collection import write_collection
from .paths import PATH_KINDS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.synthetic", description=__doc__)
    parser.add_argument("out", help="collection folder: a local path or an fsspec URL")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument("--path", choices=PATH_KINDS, default="street", help="camera path kind")
    parser.add_argument("--path-seed", type=int, default=None, help="path seed (default: the scene seed)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(126, 168), metavar=("H", "W"))
    args = parser.parse_args(argv)
    try:
        where = write_collection(args.out, args.seed, args.path, args.frames, *args.size, path_seed=args.path_seed)
    except InputError as exc:
        parser.error(str(exc))
    print(f"wrote {args.frames} {args.path} frames of scene {args.seed} to {where}")


if __name__ == "__main__":
    main()
