"""One writer per output through the stage sequence (tasks.stages.run_reconstruction): a batch collection
whose output another run holds is skipped, ``zipmap reconstruct`` refuses it in one line, and a run that
waited while another completed the output does not redo it. Tiny collections (4 frames of 56x84)."""

from __future__ import annotations

import threading
import time

import pytest

from model.synthetic import write_collection
from storage.claims import acquire, read_claim
from storage.urls import join
from storage.zarr_store import read_attrs, read_status
from tasks.batch import reconstruct_one

FRAMES, H, W = 4, 56, 84
PARAMS = {"max_voxels": 24}


@pytest.fixture()
def collection(tmp_path):
    return write_collection(str(tmp_path / "in" / "c0"), 1_000_600, "street", FRAMES, H, W)


def test_a_claimed_output_is_skipped_by_a_batch_and_refused_by_reconstruct(collection, tmp_path, capsys):
    import cli

    out = str(tmp_path / "out")
    url = join(out, "c0.zarr")
    held = acquire(out, "c0", "other-run")  # another run is writing c0
    try:
        t0 = time.perf_counter()
        row = reconstruct_one("c0", collection, out, PARAMS, attempts=3, backoff_s=30)
        assert time.perf_counter() - t0 < 20  # never retried
        assert row["status"] == "skipped" and row["reason"] == "another run other-run is writing it", row
        assert row["output"] == url and read_status(url) is None  # nothing written

        assert cli.main(["reconstruct", collection, out, "--max-voxels", "24"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: {url}: another run other-run is writing it (claimed on "), err
        assert sum("error" in line for line in err) == 1 and not any("Traceback" in line for line in err)
        assert read_status(url) is None
        held.verify()  # the holder's claim is untouched
        assert read_claim(out, "c0")["token"] == held.token
    finally:
        held.release()


def test_a_run_that_waited_does_not_redo_what_the_holder_completed(collection, tmp_path, monkeypatch):
    """Run "second" starts while "first" holds the claim; it waits (ZIPMAP_CLAIM_WAIT) and, once it has the
    claim, finds the output complete: skipped, the store still first's."""
    monkeypatch.setenv("ZIPMAP_CLAIM_WAIT", "120")
    out = str(tmp_path / "out")
    rows = {}
    first = threading.Thread(target=lambda: rows.update(first=reconstruct_one("c0", collection, out, PARAMS,
                                                                              run_id="first")))
    first.start()
    deadline = time.time() + 120
    while read_claim(out, "c0") is None and first.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    assert read_status(join(out, "c0.zarr")) is None, "first completed before second could start"
    rows["second"] = reconstruct_one("c0", collection, out, PARAMS, run_id="second")
    first.join()
    assert rows["first"]["status"] == "complete", rows
    assert rows["second"]["status"] == "skipped" and rows["second"]["reason"] == "", rows
    attrs = read_attrs(join(out, "c0.zarr"))
    assert attrs["zipmap_status"] == "complete" and attrs["zipmap_run_id"] == "first"
    assert read_claim(out, "c0") is None  # both released theirs
