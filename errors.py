"""One error family for the whole product.

Every layer (flows, tasks, model, storage, validation) may import this module: it depends on
nothing. Each subclass also inherits the builtin a caller would naturally catch, so
``except KeyError`` still works around a checkpoint problem. Messages name the object (a file, a
URL, a key) and the reason.
"""

from __future__ import annotations


class ZipMapError(Exception):
    """Root of every error raised on purpose by this product."""


class ConfigError(ZipMapError, ValueError):
    """A model or pipeline configuration names an unknown key or holds an invalid value."""


class CheckpointError(ZipMapError, KeyError):
    """A checkpoint cannot be read, or its entries do not match the network (names, shapes)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class InputError(ZipMapError, ValueError):
    """Input tensors or files have the wrong shape, size or content."""


class PoseCheckError(ZipMapError, ValueError):
    """Camera poses fail a geometric sanity check."""


class StorageError(ZipMapError, OSError):
    """Reading or writing a storage location failed."""
