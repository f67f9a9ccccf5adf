"""One writer per output: a run claims ``OUT/<collection_id>.zarr`` before it writes it.

The claim is a small JSON object beside the stores, ``OUT/_claims/<collection_id>.json``::

    {"run_id": ..., "token": ..., "store": ..., "host": ..., "pid": ..., "pid_namespace": ...,
     "acquired": ISO time, "renewed": ISO time, "expires": epoch seconds, "expires_utc": ISO time, "ttl_s": ...}

Object stores have no locks, so every change of a claim is a conditional write:

- **acquire**: create the claim only if nothing is there (S3: ``PutObject`` with ``If-None-Match: *``);
- **take over** a claim that is stale — expired (its ``expires`` has passed: the holder stopped
  renewing), or held by a process on this machine that no longer exists — by replacing it only if it
  is still the version that was read (S3: ``If-Match: <ETag>``): of several takers exactly one wins;
- **renew** (a heartbeat thread, every quarter of the TTL) and **release** (at the end of the run) the
  same way, so a run never renews or removes a claim that is no longer its own.

On local disk the same operations are atomic under a short ``flock`` of the ``_claims`` folder, and
the claim file is replaced with an atomic rename (readers never see half a claim). Other fsspec
filesystems get the same protocol without the atomicity (best effort).

A holder counts its claim as valid for 3/4 of the TTL after the write that last renewed it was sent;
anyone else only after the whole TTL. The gap (30 s at the default TTL of 120 s) covers clock skew
between machines and requests still in flight. A holder that could not renew in time (its machine
stalled, the object store was away) has lost the claim: :meth:`Claim.check` (before every write of the
store) and :meth:`Claim.verify` (remotely, before the store is begun and right before it is marked
complete) raise :class:`ClaimLost`. A writer frozen in the middle of one request for longer than that
gap can still land that request late; nothing but the store itself could fence it.

``ZIPMAP_CLAIM_TTL`` sets the TTL (seconds, default 120); ``ZIPMAP_CLAIM_WAIT`` how long a run waits
for another run's claim to go away before it gives up with :class:`errors.Busy` (default 0: at once).
A claim held by the same run id (an earlier attempt of this run, lost with its worker) is always waited
for until it expires.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from errors import Busy, StorageError, TransientError, ZipMapError, io_error

from .urls import filesystem, is_local, join, redact

logger = logging.getLogger(__name__)

CLAIM_DIR = "_claims"
TTL_ENV = "ZIPMAP_CLAIM_TTL"
WAIT_ENV = "ZIPMAP_CLAIM_WAIT"
DEFAULT_TTL_S = 120.0
DEFAULT_WAIT_S = 0.0
MIN_TTL_S = 0.5
VALID_FRACTION = 0.75  # the holder's own view: valid for this share of the TTL after a renewal was sent
RENEW_FRACTION = 0.25  # the heartbeat renews this often (share of the TTL)
POLL_S = 0.5  # how often a waiting run looks again
LOCK_WAIT_S = 30.0  # local disk: how long to wait for the claims folder's lock

_HELD: set[str] = set()  # tokens of the claims live Claim objects of this process hold
_HELD_LOCK = threading.Lock()


class ClaimLost(StorageError):
    """This run's claim on an output expired or was taken over: it must not write or complete the store."""


class _Conflict(Exception):
    """A conditional write found another version than the one it expected (or something already there)."""


def claim_url(out: str, collection_id: str) -> str:
    """Where the claim of ``OUT/<collection_id>.zarr`` lives."""
    return join(out, CLAIM_DIR, f"{collection_id}.json")


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return float(value)
    raw = os.environ.get(env, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %s", env, raw, default)
        return default


def claim_ttl(ttl_s: float | None = None) -> float:
    """The claim TTL: ``ttl_s``, else ``ZIPMAP_CLAIM_TTL``, else 120 s (at least 0.5 s)."""
    return max(MIN_TTL_S, _seconds(ttl_s, TTL_ENV, DEFAULT_TTL_S))


def claim_wait(wait_s: float | None = None) -> float:
    """How long to wait for another run's claim: ``wait_s``, else ``ZIPMAP_CLAIM_WAIT``, else 0."""
    return max(0.0, _seconds(wait_s, WAIT_ENV, DEFAULT_WAIT_S))


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or cannot tell: alive
    return True


# --- where claims are kept ------------------------------------------------------------------------------
class _LocalBackend:
    """A claim file on local disk; every change under an exclusive ``flock`` of the claims folder."""

    def __init__(self, path: str):
        self.path = path
        self.folder = os.path.dirname(path)

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            give_up = time.monotonic() + LOCK_WAIT_S
            while True:  # held for a millisecond at a time; a holder frozen inside must not block forever
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        raise TransientError(f"{self.folder}: the claims folder stayed locked for "
                                             f"{LOCK_WAIT_S:.0f} s (its holder is stopped?)") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.md5(data).hexdigest()

    def _write(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)  # atomic: a reader sees the old claim or the new one
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return hashlib.md5(data).hexdigest()

    def _expect(self, version: str | None) -> None:
        current = self.read()
        if (current[1] if current else None) != version:
            raise _Conflict

    def create(self, data: bytes) -> str:
        with self._locked():
            self._expect(None)
            return self._write(data)

    def replace(self, data: bytes, version: str) -> str:
        with self._locked():
            self._expect(version)
            return self._write(data)

    def delete(self, version: str) -> None:
        with self._locked():
            self._expect(version)
            os.remove(self.path)


_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409")


def _conflict(exc: BaseException) -> bool:
    """Whether an S3 error says a condition did not hold (412, 409 ConditionalRequestConflict, no such key)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (FileExistsError, FileNotFoundError)):
            return True
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = str((response.get("Error") or {}).get("Code", ""))
            status = str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode", ""))
            return code in _CONFLICT_CODES or status in ("409", "412")
        exc = exc.__cause__ or exc.__context__
    return False


class _S3Backend:
    """A claim object on S3: conditional ``PutObject`` (``If-None-Match: *`` / ``If-Match: <ETag>``) and
    conditional ``DeleteObject`` (``If-Match``)."""

    def __init__(self, fs, path: str):
        self.fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.split_path(path)

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        async def get():
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await resp["Body"].read(), resp["ETag"]
            finally:
                resp["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def _put(self, data: bytes, **condition) -> str:
        try:
            return self.fs.pipe_file(self.path, data, **condition)["ETag"]
        except Exception as exc:
            if _conflict(exc):
                raise _Conflict from exc
            raise

    def create(self, data: bytes) -> str:
        return self._put(data, mode="create")

    def replace(self, data: bytes, version: str) -> str:
        return self._put(data, IfMatch=version)

    def delete(self, version: str) -> None:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except Exception as exc:
            if _conflict(exc):
                raise _Conflict from exc
            raise
        finally:
            self.fs.invalidate_cache(self.path)


class _FsspecBackend(_LocalBackend):
    """Any other fsspec filesystem: create-if-absent where it has it, the rest read-compare-write (best
    effort: not atomic)."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    @contextlib.contextmanager
    def _locked(self):
        yield

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, hashlib.md5(data).hexdigest()

    def _write(self, data: bytes) -> str:
        self.fs.pipe_file(self.path, data)
        return hashlib.md5(data).hexdigest()

    def create(self, data: bytes) -> str:
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError as exc:
            raise _Conflict from exc
        except (TypeError, NotImplementedError):  # no exclusive create here
            return super().create(data)
        return hashlib.md5(data).hexdigest()

    def delete(self, version: str) -> None:
        self._expect(version)
        self.fs.rm_file(self.path)


def _backend(url: str, storage_options: Mapping[str, Any] | None):
    if is_local(url):
        path = url[len("file://"):] if url.startswith("file://") else url
        return _LocalBackend(os.path.abspath(path))
    fs, path = filesystem(url, storage_options)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" in protocols:
        return _S3Backend(fs, path)
    return _FsspecBackend(fs, path)


# --- the claim ------------------------------------------------------------------------------------------
def _io(url: str, what: str, fn, *args):
    """``fn(*args)``; storage faults as the product's errors (transient ones as TransientError)."""
    try:
        return fn(*args)
    except (_Conflict, ZipMapError):
        raise
    except Exception as exc:  # noqa: BLE001  (object-store faults -> TransientError, the rest StorageError)
        raise io_error(exc, redact(url), what, StorageError) from exc


def _read_doc(backend, url: str) -> tuple[dict, str] | None:
    """``(claim document, version)`` or None when there is no claim; an unreadable document is ``{}``."""
    current = _io(url, "cannot read the claim", backend.read)
    if current is None:
        return None
    data, version = current
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    return (doc if isinstance(doc, dict) else {}), version


class Claim:
    """This run's claim on one output store; made by :func:`acquire`. Use it as a context manager (or call
    :meth:`release`): a heartbeat thread renews it while it is held."""

    def __init__(self, backend, url: str, store_url: str, run_id: str, ttl_s: float):
        self._backend = backend
        self.url = url
        self.store_url = store_url
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.version: str | None = None
        self.doc: dict = {}
        self._deadline = 0.0  # time.monotonic() until which this holder counts the claim as valid
        self._lost: str | None = None
        self._released = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the document ---------------------------------------------------------------------------------
    def _document(self, sent_wall: float) -> bytes:
        acquired = self.doc.get("acquired") or _iso(sent_wall)
        self.doc = {"run_id": self.run_id, "token": self.token, "store": redact(self.store_url),
                    "host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
                    "acquired": acquired, "renewed": _iso(sent_wall), "expires": sent_wall + self.ttl_s,
                    "expires_utc": _iso(sent_wall + self.ttl_s), "ttl_s": self.ttl_s}
        return json.dumps(self.doc, indent=1).encode()

    def _wrote(self, version: str, sent: float) -> None:
        self.version = version
        self._deadline = sent + VALID_FRACTION * self.ttl_s

    # state -----------------------------------------------------------------------------------------
    def _lose(self, why: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = why
                logger.warning("%s: claim lost: %s", redact(self.store_url), why)
            self._stop.set()

    def check(self) -> None:
        """Raise :class:`ClaimLost` unless this run still holds the claim (its own view; no I/O)."""
        if self._released:
            raise ClaimLost(f"{redact(self.store_url)}: this run's claim was released; not writing the output")
        if self._lost is None and time.monotonic() >= self._deadline:
            self._lose(f"not renewed within {VALID_FRACTION * self.ttl_s:.1f} s")
        if self._lost is not None:
            raise ClaimLost(f"{redact(self.store_url)}: this run ({self.run_id}) lost its claim on the output "
                            f"({self._lost}); not writing it")

    def verify(self) -> None:
        """:meth:`check`, then read the claim back from storage: it must still be this run's and unexpired.
        Raises :class:`ClaimLost` (or a transient :class:`errors.TransientError` when it cannot be read)."""
        self.check()
        current = self._read()
        if current is None:
            self._lose(f"the claim {redact(self.url)} is gone")
        else:
            doc, _ = current
            if doc.get("token") != self.token:
                self._lose(f"run {doc.get('run_id', '?')} took it over")
            elif float(doc.get("expires", 0)) <= time.time():
                self._lose("it expired")
        self.check()

    # storage operations ----------------------------------------------------------------------------
    def _io(self, what: str, fn, *args):
        return _io(self.url, what, fn, *args)

    def _read(self) -> tuple[dict, str] | None:
        return _read_doc(self._backend, self.url)

    def _create(self) -> bool:
        sent, wall = time.monotonic(), time.time()
        try:
            self._wrote(self._io("cannot write the claim", self._backend.create, self._document(wall)), sent)
        except _Conflict:
            return self._mine_after_conflict(sent)
        return True

    def _take_over(self, version: str) -> bool:
        sent, wall = time.monotonic(), time.time()
        try:
            self._wrote(self._io("cannot write the claim", self._backend.replace, self._document(wall), version),
                        sent)
        except _Conflict:
            return self._mine_after_conflict(sent)
        return True

    def _mine_after_conflict(self, sent: float) -> bool:
        """After a failed conditional write: the claim may still be ours (a retried request whose first try
        went through); otherwise someone else was first."""
        current = self._read()
        if current is not None and current[0].get("token") == self.token:
            self._wrote(current[1], sent)
            return True
        return False

    def renew(self) -> None:
        """Extend the claim by one TTL, only if it is still this run's version; else it is lost."""
        with self._lock:
            self.check()
            sent, wall = time.monotonic(), time.time()
            try:
                version = self._io("cannot renew the claim", self._backend.replace, self._document(wall),
                                   self.version)
            except _Conflict:
                current = self._read()
                if current is not None and current[0].get("token") == self.token:  # a retried request went through
                    self._wrote(current[1], sent)
                    return
                self._lose(f"run {current[0].get('run_id', '?')} took it over" if current else "the claim is gone")
                self.check()  # raises ClaimLost
            else:
                self._wrote(version, sent)

    def _heartbeat(self) -> None:
        interval = RENEW_FRACTION * self.ttl_s
        while not self._stop.wait(interval):
            try:
                self.renew()
            except ClaimLost:
                return
            except Exception as exc:  # noqa: BLE001  (storage away: try again; check() ends it in time)
                logger.warning("%s: cannot renew the claim yet: %s", redact(self.store_url), exc)

    def _start(self) -> None:
        with _HELD_LOCK:
            _HELD.add(self.token)
        self._thread = threading.Thread(target=self._heartbeat, name=f"zipmap-claim-{self.run_id}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and remove the claim, only if it is still this run's (a no-op after the first call)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            if self._lost is None and self.version is not None:
                current = self._read()
                if current is not None and current[0].get("token") == self.token:
                    self._io("cannot remove the claim", self._backend.delete, current[1])
        except _Conflict:
            pass  # taken over meanwhile: not ours to remove
        except Exception as exc:  # noqa: BLE001  (it expires by itself)
            logger.warning("%s: could not release the claim (it expires by itself): %s", redact(self.store_url),
                           exc)
        finally:
            with _HELD_LOCK:
                _HELD.discard(self.token)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _stale(doc: dict) -> str | None:
    """Why a claim someone else wrote may be taken over now, or None while it is live."""
    if not doc or "token" not in doc:
        return "unreadable"
    if float(doc.get("expires", 0)) <= time.time():
        return "expired"
    if doc.get("host") == socket.gethostname() and doc.get("pid_namespace", "") == _pid_namespace():
        pid = int(doc.get("pid", -1))
        if pid == os.getpid():
            with _HELD_LOCK:
                if doc["token"] not in _HELD:
                    return "its holder (this process) let it go"
        elif not _pid_alive(pid):
            return f"its holder (process {pid} on this machine) is gone"
    return None


def acquire(out: str, collection_id: str, run_id: str, storage_options: Mapping[str, Any] | None = None,
            ttl_s: float | None = None, wait_s: float | None = None, store_url: str | None = None) -> Claim:
    """Claim ``OUT/<collection_id>.zarr`` for ``run_id``; returns the held :class:`Claim` (renewed by a
    heartbeat thread until released).

    A live claim of another run: wait up to ``wait_s`` (:func:`claim_wait`) for it to go away, then raise
    :class:`errors.Busy` naming that run. A claim of this same run id is waited for until it expires (an
    earlier attempt, lost with its worker). A stale claim is taken over; of concurrent takers one wins."""
    url = claim_url(out, collection_id)
    store_url = store_url or join(out, f"{collection_id}.zarr")
    claim = Claim(_backend(url, storage_options), url, store_url, run_id, claim_ttl(ttl_s))
    give_up = time.monotonic() + claim_wait(wait_s)
    with _HELD_LOCK:  # registered before it is written: this process never takes its own live claim
        _HELD.add(claim.token)
    try:
        while True:
            if claim._create():
                break
            current = claim._read()
            if current is None:
                continue  # released meanwhile: try again
            doc, version = current
            why = _stale(doc)
            if why is not None:
                if claim._take_over(version):
                    logger.info("%s: took over the claim of run %s (%s)", redact(store_url), doc.get("run_id"), why)
                    break
                continue  # another taker was first: look again
            now = time.monotonic()
            until = give_up
            if doc.get("run_id") == run_id:  # this run's earlier attempt: wait for it to expire
                until = max(until, now + float(doc.get("expires", 0)) - time.time() + POLL_S)
            if now >= until:
                raise Busy(redact(store_url), str(doc.get("run_id", "?")),
                           f"claimed on {doc.get('host', '?')} by process {doc.get('pid', '?')} until "
                           f"{doc.get('expires_utc', '?')}; claim {redact(claim.url)}")
            time.sleep(min(POLL_S, until - now))
    except BaseException:
        with _HELD_LOCK:
            _HELD.discard(claim.token)
        raise
    claim._start()
    return claim


def read_claim(out: str, collection_id: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The claim document of ``OUT/<collection_id>.zarr`` (held or stale), or None."""
    url = claim_url(out, collection_id)
    current = _read_doc(_backend(url, storage_options), url)
    return None if current is None else current[0]


__all__ = ["Claim", "ClaimLost", "acquire", "read_claim", "claim_url", "claim_ttl", "claim_wait", "CLAIM_DIR",
           "TTL_ENV", "WAIT_ENV"]
