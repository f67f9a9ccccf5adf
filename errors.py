"""One error family for the whole product.

Every layer (flows, tasks, model, storage, validation) may import this module: it depends on
nothing. Each subclass also inherits the builtin a caller would naturally catch, so
``except KeyError`` still works around a checkpoint problem. Messages name the object (a file, a
URL, a key) and the reason. :func:`scrub` is the one redaction of secrets (URL credentials, signed
queries, registered storage-option secrets) that every written or logged string goes through.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from urllib.parse import quote, unquote


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


class Busy(ZipMapError, RuntimeError):
    """Another run holds the claim on an output (``storage.claims``): this run leaves that output alone
    (a batch row ``skipped``, reason ``another run <id> is writing it``). Not transient, never retried."""

    def __init__(self, output: str, holder: str, detail: str = ""):
        self.output, self.holder, self.detail = output, holder, detail
        self.reason = f"another run {holder} is writing it"
        super().__init__(f"{output}: {self.reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across processes (Dask, Prefect) with its fields
        return type(self), (self.output, self.holder, self.detail)


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


# --- secrets: the one redaction of every string the pipeline writes or logs --------------------------------
# Three kinds of secret are removed: the user info of URLs (``s3://KEY:SECRET@bucket/...``, also written
# raw with a ``/`` in the password), signed query strings (the whole query of a URL goes; ``X-Amz-Signature=``,
# ``sig=``, ``token=`` ... anywhere else become ``***``), and every value in the process-wide registry of
# secret values, which storage options register when they are resolved or received (their values under
# keys that look secret: :data:`SECRET_WORDS`, nested ``client_kwargs`` too) and URLs register with their
# user info and signed queries (so an error that quotes a fragment of them, such as a bucket name
# ``"KEY:SECRET@bucket"``, is caught too). :func:`install_log_scrubbing` puts log records and tracebacks of
# a process through the same :func:`scrub`.

SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")
MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values are not registered (they would mask ordinary words)
_MIN_FRAGMENT_LENGTH = 8  # pieces of a URL password between its "/" (quoted on their own by s3fs's errors)

_SCHEME = r"\b[a-zA-Z][a-zA-Z0-9+.-]*://"
_END = "\\s\"'<>"  # characters that end a URL in free text
# user:password@ where the password holds a raw "/" (not a port: host:8080/a@b keeps its path)
_USERINFO_RAW = re.compile(rf"({_SCHEME})([^{_END}/@:]+):(?!\d+(?:[/?#{_END}]|$))([^{_END}@]*)@")
_USERINFO = re.compile(rf"({_SCHEME})([^{_END}/@]*)@")
_QUERY = re.compile(rf"({_SCHEME}[^{_END}?#]*)[?#][^{_END}]*")
# names of signed-URL and secret parameters: X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, sig,
# token, access_token, AWSAccessKeyId, password, secret, api_key, ...
_SIGNED_NAMES = r"[\w-]*?(?:signature|credential|token|sig|awsaccesskeyid|password|passwd|secret|api[_-]?key)"
_SIGNED = re.compile(rf"(?i)(?<![\w-])({_SIGNED_NAMES}=)[^&;{_END}#]+")
_SIGNED_PARAM = re.compile(rf"(?i)^{_SIGNED_NAMES}$")

_registry: set[str] = set()
_registry_lock = threading.Lock()
_registry_pattern: re.Pattern | None = None


def is_secret_key(name) -> bool:
    """Whether a storage option's name looks like it holds a secret (``key``, ``secret``, ``token``,
    ``password``, ``credential``, ``session``, anywhere in the name, any case)."""
    return any(word in str(name).lower() for word in SECRET_WORDS)


def register_secret(value) -> None:
    """Add a secret value (and its URL-encoded form) to the registry :func:`scrub` masks; values shorter than
    :data:`MIN_SECRET_LENGTH` and anything but text are ignored."""
    global _registry_pattern
    if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_LENGTH:
        return
    variants = {value, value.strip(), quote(value, safe=""), quote(value, safe="/")}
    with _registry_lock:
        if variants <= _registry:
            return
        _registry.update(variants)
        _registry_pattern = None


def _leaves(value):
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            yield from _leaves(v)
    elif hasattr(value, "get_secret_value"):  # pydantic SecretStr (a Prefect Secret block's value)
        yield value.get_secret_value()
    else:
        yield value


def register_secrets(options):
    """Register the values of ``options`` (storage options: a mapping, nested ones included) whose keys look
    secret (:func:`is_secret_key`); returns ``options`` unchanged."""
    if isinstance(options, Mapping):
        for key, value in options.items():
            if is_secret_key(key):
                for leaf in _leaves(value):
                    register_secret(leaf)
            else:
                register_secrets(value)
    elif isinstance(options, (list, tuple)):
        for value in options:
            register_secrets(value)
    return options


def url_secrets(text) -> list[str]:
    """The secret parts of the URLs in ``text``: user names and passwords (and the pieces of a password
    between its ``/``), and the values of signed query parameters (``X-Amz-Signature``, ``X-Amz-Credential``,
    ``sig``, ``token``, ...)."""
    text = str(text)
    found: list[str] = []
    for m in _USERINFO_RAW.finditer(text):
        user, password = m.group(2), m.group(3)
        found += [user, password, f"{user}:{password}", f"{user}:{password.split('/')[0]}"]  # s3fs's "bucket"
        found += [p for p in password.split("/") if len(p) >= _MIN_FRAGMENT_LENGTH]
    for m in _USERINFO.finditer(text):
        user, _, password = m.group(2).partition(":")
        found += [m.group(2), user, password]
    for m in re.finditer(rf"{_SCHEME}[^{_END}?#]*\?([^{_END}#]*)", text):
        for pair in re.split(r"[&;]", m.group(1)):
            name, _, value = pair.partition("=")
            if value and _SIGNED_PARAM.match(unquote(name)):
                found += [value, unquote(value), unquote(value).split("/")[0]]  # X-Amz-Credential: KEYID/date/...
    return [s for s in dict.fromkeys(found) if len(s) >= MIN_SECRET_LENGTH]


def register_url_secrets(text) -> None:
    """Register the secret parts of the URLs in ``text`` (:func:`url_secrets`)."""
    for secret in url_secrets(text):
        register_secret(secret)


def _pattern() -> re.Pattern | None:
    global _registry_pattern
    with _registry_lock:
        if _registry_pattern is None and _registry:
            ordered = sorted(_registry, key=len, reverse=True)  # the longest first: no half-masked secret
            _registry_pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return _registry_pattern


def scrub(text: str) -> str:
    """``text`` without secrets: the user info (``user:password@``) and query strings (signed URLs) of its
    URLs removed, signed query parameters elsewhere (``X-Amz-Signature=...``) and every registered secret
    value (:func:`register_secrets`) replaced by ``***``."""
    text = str(text)
    pattern = _pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _USERINFO.sub(r"\1", _USERINFO_RAW.sub(r"\1", text))
    return _SIGNED.sub(rf"\1{MASK}", _QUERY.sub(r"\1", text))


def scrub_all(value):
    """``value`` (text, or mappings and lists of it, as written to attributes or artifacts) with every string
    put through :func:`scrub`; other values as they are."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: scrub_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_all(v) for v in value)
    return value


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """A log record with its message (arguments merged in), traceback and stack put through :func:`scrub`,
    in place; the traceback becomes ``exc_text`` (formatters print that instead of formatting ``exc_info``)."""
    if getattr(record, "zipmap_scrubbed", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001  (a malformed call: the handler reports it; still no raw arguments)
        message = f"{record.msg} {record.args!r}"
    record.msg, record.args = scrub(message), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    record.exc_info = None
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    record.zipmap_scrubbed = True
    return record


class ScrubFilter(logging.Filter):
    """A logging filter that puts every record through :func:`scrub_record` (and lets it pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
_FILTER = ScrubFilter()
_SCRUBBING = "_zipmap_scrubbing"
SCRUBBED_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.extra", "distributed")


def _scrubbing_factory(previous):
    def factory(*args, **kwargs):
        return scrub_record(previous(*args, **kwargs))

    setattr(factory, _SCRUBBING, True)
    return factory


def _print_scrubbed(exc_type, exc, tb, header: str = "") -> None:
    sys.stderr.write(header + scrub("".join(traceback.format_exception(exc_type, exc, tb))))
    sys.stderr.flush()


def _thread_hook(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    _print_scrubbed(args.exc_type, args.exc_value, args.exc_traceback, f"Exception in thread {name}:\n")


def install_log_scrubbing() -> None:
    """Put every log record of this process through :func:`scrub` (idempotent): a record factory that scrubs
    each record as it is made (whatever handler later sends it: console, Prefect's API, Dask's), plus a
    :class:`ScrubFilter` on the root, Prefect and Dask loggers and their handlers; uncaught exceptions (the
    process's and threads' tracebacks) are printed scrubbed too. Installed in the flow process and, through
    the preloaded ``tasks.batch``, in the Dask worker processes. The object-store secrets of the environment
    (:data:`SECRET_ENV`) are registered too."""
    for name in SECRET_ENV:
        register_secret(os.environ.get(name))
    current = logging.getLogRecordFactory()
    if not getattr(current, _SCRUBBING, False):
        logging.setLogRecordFactory(_scrubbing_factory(current))
    for name in SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _print_scrubbed
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _thread_hook


def log_scrubbing_installed() -> bool:
    """Whether :func:`install_log_scrubbing` ran in this process (its record factory is in place)."""
    return bool(getattr(logging.getLogRecordFactory(), _SCRUBBING, False))


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
