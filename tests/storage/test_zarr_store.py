"""The Zarr store's write protocol: status last, failure marking, one owner per output."""

import numpy as np
import pytest

from errors import StorageError
from storage.zarr_store import ReconstructionStore, Variable, open_reconstruction, read_attrs, read_status


def _write(store):
    store.write_group("views", {"depth": Variable(("view", "y", "x"), np.ones((2, 3, 4), np.float32),
                                                  {"long_name": "depth", "units": "m"})})


def test_status_is_written_last(tmp_path):
    url = str(tmp_path / "a.zarr")
    store = ReconstructionStore(url)
    store.begin({"collection_id": "a"})
    _write(store)
    assert read_status(url) == "writing"
    with pytest.raises(StorageError, match="not a complete reconstruction"):
        open_reconstruction(url)
    store.complete({"summary": {"x": 1.0, "nan": float("nan")}})
    attrs = read_attrs(url)
    assert attrs["zipmap_status"] == "complete" and attrs["summary"] == {"x": 1.0, "nan": None}
    tree = open_reconstruction(url)
    assert tree["views"]["depth"].attrs["units"] == "m"


def test_two_runs_cannot_both_complete_one_output(tmp_path):
    url = str(tmp_path / "b.zarr")
    first, second = ReconstructionStore(url, run_id="run-1"), ReconstructionStore(url, run_id="run-2")
    first.begin({})
    _write(first)
    second.begin({})  # a second run takes the output over
    _write(second)
    with pytest.raises(StorageError, match="another run took over"):
        first.complete()
    first.fail("should not be recorded: not ours any more")
    assert read_status(url) == "writing"
    second.complete()
    assert read_status(url) == "complete" and read_attrs(url)["zipmap_run_id"] == "run-2"


def test_fail_marks_failed_and_is_a_no_op_without_a_store(tmp_path):
    missing = ReconstructionStore(str(tmp_path / "none.zarr"))
    missing.fail("nothing there")
    assert read_status(missing.url) is None
    store = ReconstructionStore(str(tmp_path / "c.zarr"))
    store.begin({})
    store.fail("decode failed")
    assert read_status(store.url) == "failed" and read_attrs(store.url)["zipmap_error"] == "decode failed"
