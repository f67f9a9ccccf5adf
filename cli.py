"""The ``zipmap`` command line.

    zipmap evaluate COLLECTION [COLLECTION ...] [--weights W] --json OUT.json
    zipmap predict ...        (same as python -m model.predict)
    zipmap verify FIXTURE.npz (same as python -m model.verify_reference)
"""

from __future__ import annotations

import argparse
import sys

import torch


def _evaluate(args) -> int:
    from model.evaluation.evaluate import evaluate, format_table, write_report
    from model.weights import bundled_checkpoint, load_zipmap

    weights = args.weights or bundled_checkpoint()
    model = load_zipmap(weights, args.preset, device=args.device)
    report = evaluate(model, args.collections)
    report["weights"] = weights
    write_report(report, args.json)
    print(format_table(report))
    print(f"report: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        from model.predict import main as predict_main

        return predict_main(argv[1:])
    if argv and argv[0] == "verify":
        from model.verify_reference import main as verify_main

        return verify_main(argv[1:])
    parser = argparse.ArgumentParser(prog="zipmap", description="ZipMap Pipeline command line")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score a model on collections with cameras.json and depth/")
    ev.add_argument("collections", nargs="+", help="collection folders or URLs")
    ev.add_argument("--weights", default=None, help="checkpoint URL (default: the bundled model)")
    ev.add_argument("--preset", default=None, help="preset for .pt checkpoints (default: JSON beside the file)")
    ev.add_argument("--json", required=True, help="where to write the JSON report")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sub.add_parser("predict", help="run the network on photos (see python -m model.predict -h)")
    sub.add_parser("verify", help="check parity with a reference fixture")
    args = parser.parse_args(argv)
    return {"evaluate": _evaluate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
