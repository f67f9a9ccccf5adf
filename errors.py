"""One error family for the whole product.

Every layer (flows, tasks, model, storage, validation) may import this module: it depends on
nothing. Each subclass also inherits the builtin a caller would naturally catch, so
``except KeyError`` still works around a checkpoint problem. Messages name the object (a file, a
URL, a key) and the reason.
"""

from __future__ import annotations

import errno
import re


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


class TransientError(StorageError):
    """An object-store or network fault that may pass by itself: a timeout, a connection refused or
    reset, an HTTP 5xx, throttling (``SlowDown``, 503, 429), a remote checkpoint that does not answer.

    The one mechanism that retries these is ``tasks.retry.with_retries`` (exponential backoff with
    jitter; each collection of a batch, the batch flow's own I/O, ``zipmap reconstruct``); bad input
    (:class:`InputError`, :class:`PoseCheckError`, a validation failure) is never retried.
    :func:`is_transient` decides, :func:`io_error` turns a raw I/O exception into either."""


# --- one classification of I/O failures ------------------------------------------------------------
# fsspec, s3fs, aiobotocore/botocore, aiohttp, urllib3 and http.client raise their own exception types;
# they are recognised here by builtin base class, by class name (anywhere in the class's MRO, so no
# import of those packages is needed), by the S3 error code or HTTP status they carry, and by errno.

_TRANSIENT_NAMES = frozenset({
    # botocore (``ConnectionError`` is botocore's own base of EndpointConnectionError, ConnectTimeoutError)
    "ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "HTTPClientError",
    "ConnectionClosedError", "ProxyConnectionError", "ResponseStreamingError", "IncompleteReadError",
    "ResponseParserError",  # throttling responses can carry invalid XML (s3fs retries it too)
    # aiohttp
    "ClientConnectionError", "ClientConnectorError", "ServerConnectionError", "ServerDisconnectedError",
    "ServerTimeoutError", "ClientPayloadError",
    # fsspec, http.client, urllib3, requests
    "FSTimeoutError", "IncompleteRead", "RemoteDisconnected", "ProtocolError", "NewConnectionError",
    "MaxRetryError", "ChunkedEncodingError",
})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "ProvisionedThroughputExceededException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException", "PriorRequestNotComplete",
    "429", "500", "502", "503", "504",
})
_TRANSIENT_TEXT = ("SlowDown", "reduce your request rate", "Service Unavailable", "Too Many Requests")
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED",
                                                    "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "ENETRESET",
                                                    "EPIPE", "EHOSTDOWN") if hasattr(errno, name))
_INPUT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _transient_status(status) -> bool | None:
    """True for 408, 429 and 5xx (but 501), False for other 4xx, None when not an HTTP status."""
    try:
        status = int(status)
    except (TypeError, ValueError):
        return None
    if status in (408, 429) or (500 <= status < 600 and status != 501):
        return True
    return False if 400 <= status < 500 else None


def _verdict(exc: BaseException) -> bool | None:
    """True (transient), False (not: bad input, configuration, a definite 4xx) or None (this exception alone
    does not say; its cause may)."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, ZipMapError) and not isinstance(exc, StorageError):
        return False
    if isinstance(exc, _INPUT_TYPES):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):  # socket.timeout, asyncio.TimeoutError, resets, refusals
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        error = response.get("Error") or {}
        code = str(error.get("Code", ""))
        if code in _TRANSIENT_CODES:
            return True
        by_status = _transient_status((response.get("ResponseMetadata") or {}).get("HTTPStatusCode"))
        if by_status is not None:
            return by_status
        if code:
            return False
    for attr in ("status", "status_code"):  # aiohttp ClientResponseError, fsspec/requests HTTP errors
        by_status = _transient_status(getattr(exc, attr, None))
        if by_status is not None:
            return by_status
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if any(text in str(exc) for text in _TRANSIENT_TEXT):
        return True
    return None


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an object-store or network fault worth retrying (see :class:`TransientError`).

    The exception and then its causes are asked in turn; the first that says yes or no decides
    (s3fs, for one, raises ``OSError(EBUSY)`` caused by the ``ClientError`` that holds ``SlowDown``).
    Missing files, permissions, bad content and every :class:`ZipMapError` but :class:`TransientError`
    are not transient; nor is anything unrecognised."""
    for e in _chain(exc):
        verdict = _verdict(e)
        if verdict is not None:
            return verdict
    return False


_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@\"']*@")
_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"']*)[?#][^\s\"']*")


def scrub(text: str) -> str:
    """``text`` with the user info (``user:password@``) and query strings (signed URLs) of its URLs removed."""
    return _QUERY.sub(r"\1", _USERINFO.sub(r"\1", str(text)))


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, credentials removed; an empty message borrows its cause's."""
    for e in _chain(exc):
        if str(e):
            return scrub(f"{type(exc).__name__}: {e}" if e is exc else f"{type(exc).__name__}: {type(e).__name__}: {e}")
    return type(exc).__name__


def io_error(exc: BaseException, where: str, what: str = "cannot be read",
             otherwise: type[ZipMapError] = InputError) -> ZipMapError:
    """The product's error for an I/O exception raised reading or writing ``where`` (a file or URL).

    Transient faults (:func:`is_transient`) become :class:`TransientError`, a missing file
    ``otherwise("<where>: missing")``, anything else ``otherwise("<where>: <what> (<reason>)")``;
    ``otherwise`` is :class:`InputError` for inputs (never retried), :class:`StorageError` for outputs.
    An exception that already is a :class:`ZipMapError` is returned as it is. Messages never hold
    credentials. Raise the result ``from exc``."""
    if isinstance(exc, ZipMapError):
        return exc
    if is_transient(exc):
        return TransientError(scrub(f"{where}: {what}: transient object-store or network fault "
                                    f"({describe(exc)})"))
    if isinstance(exc, FileNotFoundError):
        return otherwise(scrub(f"{where}: missing"))
    return otherwise(scrub(f"{where}: {what} ({describe(exc)})"))
