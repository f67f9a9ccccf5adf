"""One writer per output (storage.claims): the claim on local disk and on a real S3 API (moto), and two
writers of one store in processes of their own (tests/storage/claim_writer.py)."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from errors import Busy, is_transient
from storage.claims import ClaimLost, acquire, claim_url, read_claim
from storage.urls import join
from storage.zarr_store import ReconstructionStore, read_attrs, read_status

WRITER = Path(__file__).with_name("claim_writer.py")


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """``(OUT, storage_options)``: a local folder, or a prefix of a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "out"), None
    bucket, opts = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out", opts


class Writer:
    """tests/storage/claim_writer.py in a process of its own, its lines read as they come."""

    def __init__(self, out, opts, cid, run_id, *args):
        self.proc = subprocess.Popen([sys.executable, str(WRITER), out, cid, run_id, "--options", json.dumps(opts),
                                      *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    def until(self, prefix: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no {prefix!r} line: {self.lines} {self.proc.stderr.read() if self.proc.poll() else ''}")

    def finish(self, timeout: float = 60) -> int:
        self.proc.wait(timeout=timeout)  # its few lines fit in the pipes
        self.lines += self.proc.stdout.read().strip().splitlines()  # read through the buffer until() used
        err = self.proc.stderr.read()
        assert "Traceback" not in err, err
        return self.proc.returncode

    def stop(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def go_on(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _stop_outside_the_lock(writer: Writer, out: str, opts) -> None:
    """SIGSTOP ``writer``; on local disk, not while it holds the claims folder's lock for a millisecond (its
    heartbeat may be renewing just then: retried a moment later)."""
    for _ in range(100):
        writer.stop()
        if opts is not None:
            return
        fd = os.open(os.path.join(out, "_claims"), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            writer.go_on()
            time.sleep(0.01)
        finally:
            os.close(fd)
    raise AssertionError("the writer held the claims lock every time")


def _expire(doc: dict) -> None:
    time.sleep(max(0.0, doc["expires"] - time.time()) + 0.1)


def test_a_second_claim_is_refused_naming_the_holder(where):
    out, opts = where
    first = acquire(out, "c0", "run-a", opts, ttl_s=30)
    doc = read_claim(out, "c0", opts)
    assert doc["run_id"] == "run-a" and doc["token"] == first.token and doc["pid"] == os.getpid()
    assert doc["store"] == join(out, "c0.zarr") and doc["expires"] - time.time() > 25
    with pytest.raises(Busy) as busy:
        acquire(out, "c0", "run-b", opts)
    assert busy.value.reason == "another run run-a is writing it" and busy.value.holder == "run-a"
    assert str(busy.value).startswith(f"{join(out, 'c0.zarr')}: another run run-a is writing it (claimed on ")
    assert claim_url(out, "c0") in str(busy.value) and not is_transient(busy.value)
    again = pickle.loads(pickle.dumps(busy.value))  # crosses processes (Dask, Prefect) whole
    assert (type(again), str(again), again.reason) == (Busy, str(busy.value), busy.value.reason)
    first.verify()  # refusing touched nothing
    other = acquire(out, "c1", "run-b", opts)  # another output: its own claim
    first.release()
    first.release()  # a no-op
    assert read_claim(out, "c0", opts) is None and read_claim(out, "c1", opts)["run_id"] == "run-b"
    with pytest.raises(ClaimLost, match="released"):
        first.check()
    second = acquire(out, "c0", "run-b", opts)
    assert read_claim(out, "c0", opts)["token"] == second.token
    second.release()
    other.release()


def test_the_heartbeat_keeps_a_claim_and_a_waiting_run_gets_it_when_released(where):
    out, opts = where
    first = acquire(out, "c0", "run-a", opts, ttl_s=0.8)
    time.sleep(2.0)  # well past the TTL: renewed by its heartbeat
    first.verify()
    assert read_claim(out, "c0", opts)["expires"] > time.time()
    with pytest.raises(Busy):
        acquire(out, "c0", "run-b", opts, ttl_s=1.0)
    threading.Timer(0.6, first.release).start()
    t0 = time.monotonic()
    second = acquire(out, "c0", "run-b", opts, wait_s=20)  # wait-then-skip: here it waited, then got it
    assert 0.5 < time.monotonic() - t0 < 10
    second.verify()
    second.release()


def test_an_expired_claim_is_taken_over_and_its_stalled_holder_lets_it_be(where):
    """The holder is alive but stopped (SIGSTOP) past its TTL: the claim expires and another run takes it;
    when it goes on, the holder finds its claim lost and its release leaves the new claim alone."""
    out, opts = where
    holder = Writer(out, opts, "c0", "run-a", "--ttl", 1.5, "--then", "hold")
    try:
        holder.until("claimed")
        _stop_outside_the_lock(holder, out, opts)
        with pytest.raises(Busy, match="run-a"):  # stopped, not dead: live until it expires
            acquire(out, "c0", "run-b", opts)
        _expire(read_claim(out, "c0", opts))
        taker = acquire(out, "c0", "run-b", opts)
        holder.go_on()
        assert holder.until("lost").startswith("lost: ")
        assert holder.finish() == 4 and holder.lines[-1] == "released"
        taker.verify()  # the old holder's release did not remove it
        assert read_claim(out, "c0", opts)["token"] == taker.token
        taker.release()
    finally:
        holder.kill()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(where):
    out, opts = where
    holder = Writer(out, opts, "c0", "run-a", "--ttl", 600, "--then", "die")
    holder.until("claimed")
    assert holder.finish() == 0
    assert read_claim(out, "c0", opts)["expires"] > time.time() + 500  # far from expired
    t0 = time.monotonic()
    taker = acquire(out, "c0", "run-b", opts)
    assert time.monotonic() - t0 < 5 and read_claim(out, "c0", opts)["run_id"] == "run-b"
    taker.release()


def _race(out, opts, n=8) -> tuple[list, list]:
    barrier = threading.Barrier(n)
    won, refused = [], []

    def take(i):
        barrier.wait()
        try:
            won.append(acquire(out, "c0", f"run-{i}", opts))
        except Busy as exc:
            refused.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_of_concurrent_takers_exactly_one_wins(where):
    out, opts = where
    won, refused = _race(out, opts)  # a free output
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    assert {exc.holder for exc in refused} == {won[0].run_id}
    won[0].release()
    holder = Writer(out, opts, "c0", "run-x", "--ttl", 0.5, "--then", "die")  # a stale claim: expired, holder gone
    holder.until("claimed")
    holder.finish()
    _expire(read_claim(out, "c0", opts))
    won, refused = _race(out, opts)
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    assert {exc.holder for exc in refused} == {won[0].run_id}
    assert read_claim(out, "c0", opts)["token"] == won[0].token
    won[0].verify()
    won[0].release()


def test_a_store_is_begun_and_completed_only_under_its_claim(where):
    out, opts = where
    url = join(out, "c0.zarr")
    claim = acquire(out, "c0", "run-a", opts)
    claim.release()
    with pytest.raises(ClaimLost, match="released"):
        ReconstructionStore(url, opts, run_id="run-a", claim=claim).begin({})
    assert read_status(url, opts) is None  # nothing begun

    claim = acquire(out, "c0", "run-a", opts, ttl_s=30)
    store = ReconstructionStore(url, opts, run_id="run-a", claim=claim)
    store.begin({})
    claim.release()  # e.g. lost: from now on nothing more is written or completed
    with pytest.raises(ClaimLost):
        store.complete()
    store.fail("gone")  # not ours any more: not recorded
    assert read_status(url, opts) == "writing"


def _values(url, opts) -> np.ndarray:
    return zarr.open_group(url, mode="r", **({"storage_options": opts} if opts else {}))["data/v"][...]


def test_two_writers_of_one_store_at_once(where):
    """Two processes write one store at the same moment: one writes and completes it, the other never
    touches it."""
    out, opts = where
    at = time.time() + 3  # both claim at this moment (each started and imported by then)
    a = Writer(out, opts, "c0", "run-a", "--value", 1, "--pause", 0.2, "--at", at)
    b = Writer(out, opts, "c0", "run-b", "--value", 2, "--pause", 0.2, "--at", at)
    codes = {a.finish(): "run-a", b.finish(): "run-b"}
    assert sorted(codes) == [0, 3], (a.lines, b.lines)
    winner, loser = codes[0], codes[3]
    assert (a if loser == "run-a" else b).lines == [f"busy {winner}"]
    url = join(out, "c0.zarr")
    attrs = read_attrs(url, opts)
    assert attrs["zipmap_status"] == "complete" and attrs["zipmap_run_id"] == winner and attrs["writer"] == winner
    assert (_values(url, opts) == (1 if winner == "run-a" else 2)).all()
    assert read_claim(out, "c0", opts) is None


def test_a_stalled_writer_never_completes_over_the_run_that_took_over(where):
    """Writer A is stopped mid-store past its TTL; B waits for A's claim to expire, takes it over, rewrites
    the store and completes it. A, going on, writes nothing more and never marks anything complete: the
    complete store holds only B's data."""
    out, opts = where
    url = join(out, "c0.zarr")
    a = Writer(out, opts, "c0", "run-a", "--ttl", 1.5, "--value", 1, "--pause", 0.3)
    b = None
    try:
        a.until("chunk 1")
        _stop_outside_the_lock(a, out, opts)
        assert read_attrs(url, opts)["zipmap_run_id"] == "run-a" and (_values(url, opts)[:8] == 1).all()
        b = Writer(out, opts, "c0", "run-b", "--ttl", 30, "--value", 2, "--wait", 30)  # waits for A's to expire
        assert b.finish() == 0 and b.lines[-2:] == ["complete", "released"], b.lines
        assert read_status(url, opts) == "complete"
        a.go_on()
        assert a.finish() == 4, a.lines
        assert a.lines[-2].startswith("lost: ") and "complete" not in a.lines
    finally:
        a.kill()
        if b is not None:
            b.kill()
    attrs = read_attrs(url, opts)
    assert attrs["zipmap_status"] == "complete" and attrs["zipmap_run_id"] == "run-b" and attrs["writer"] == "run-b"
    assert (_values(url, opts) == 2).all()
