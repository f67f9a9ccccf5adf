"""Run the network on photos: :func:`predict` (decoded arrays in, numpy predictions out).

The command is ``zipmap predict --weights W --images PHOTOS --out predictions.npz`` (image files are
decoded by the storage layer's defensive decoder, which this package does not import). It writes one
``.npz`` with ``pose_enc`` ``[S, 9]``, ``cam_from_world`` ``[S, 3, 4]``, ``intrinsics`` ``[S, 3, 3]``,
``depth`` ``[S, h, w]``, ``depth_conf``, ``local_points`` ``[S, h, w, 3]``, ``world_points`` and
``images``, all at the network's input size (:mod:`model.inference`, the one inference path).
"""

from __future__ import annotations

import sys

from .inference import predict

__all__ = ["predict"]


def main(argv: list[str] | None = None) -> int:
    print("python -m model.predict is now `zipmap predict` (same options; --checkpoint is also --weights)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
