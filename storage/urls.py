"""URLs: every input and output of the pipeline is a URL that fsspec opens.

A plain path (the default), ``file://``, ``s3://`` (through s3fs) or any other fsspec protocol.
Object-store credentials and endpoints come from the standard environment variables, which s3fs
reads itself (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, profiles, instance roles), or from
explicit ``storage_options`` (the keyword arguments of the fsspec filesystem, e.g. s3fs's ``key``,
``secret``, ``endpoint_url``, ``client_kwargs``). Storage options are never written to logs,
reports or outputs: :func:`redact` (a URL) and :func:`public_options` (the options) are what goes
there. Every option set this module opens a filesystem with has its secret values registered with
:func:`errors.scrub` (and every URL its user info and signed query), so no message quotes them.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from errors import StorageError, TransientError, is_secret_key, register_secrets, register_url_secrets, scrub

# Object-store retries. Transient faults (timeouts, lost connections, 5xx, throttling) are retried in
# one place: the batch, per collection, with exponential backoff and jitter (tasks.batch). Below it
# each S3 request gets botocore's "standard" retries, S3_MAX_ATTEMPTS attempts in all (a few seconds:
# a lost connection or one SlowDown does not cost a whole collection), and s3fs's own retry loop is
# cut to one try, so the layers do not multiply into minutes (s3fs 5 x botocore's default 5 attempts,
# each up to s3fs's 15 s read timeout). AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, or ``config_kwargs``
# ``retries`` in the storage options, replace the botocore setting.
S3_MAX_ATTEMPTS = 3
S3FS_RETRIES = 1
_S3_SCHEMES = ("s3", "s3a")


def fs_options(url: str, storage_options: Mapping[str, Any] | None = None) -> dict:
    """The fsspec options this package opens ``url`` with: ``storage_options`` plus, for S3, the bounded
    botocore retries above (unless the options or the environment set them). Registers the options'
    secret values and ``url``'s credentials with :func:`errors.scrub`."""
    register_secrets(storage_options)
    register_url_secrets(url)
    opts = dict(storage_options or {})
    if urlsplit(str(url)).scheme not in _S3_SCHEMES or os.environ.get("AWS_MAX_ATTEMPTS") \
            or os.environ.get("AWS_RETRY_MODE"):
        return opts
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS})
    opts["config_kwargs"] = config
    return opts


def bound_retries(fs):
    """``fs`` with s3fs's internal retry loop cut to :data:`S3FS_RETRIES` (see above); other filesystems as
    they are."""
    if "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) and \
            getattr(fs, "retries", 0) > S3FS_RETRIES:
        fs.retries = S3FS_RETRIES
    return fs


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """``(fs, path)`` for ``url``; ``path`` has no trailing slash. S3 filesystems get bounded retries
    (:func:`fs_options`, :func:`bound_retries`). An S3 URL with credentials in it (``s3://KEY:SECRET@bucket``)
    is refused in one line: s3fs would read them as part of the bucket name."""
    scheme, _, rest = str(url).partition("://")
    if scheme.lower() in _S3_SCHEMES and any(c in rest.split("/", 1)[0] for c in "@:"):  # no bucket has @ or :
        from errors import ConfigError

        raise ConfigError(f"{redact(url)}: credentials in an S3 URL are not used; give them as AWS_ACCESS_KEY_ID / "
                          "AWS_SECRET_ACCESS_KEY, --storage-options or --credentials (env:VAR, file:PATH, block:NAME)")
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **fs_options(url, storage_options))
    except (ValueError, ImportError) as exc:
        raise StorageError(f"{redact(url)}: cannot open this URL ({exc})") from exc
    return bound_retries(fs), path.rstrip("/") or "/"


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or a local path, with ``/``."""
    url = str(url)
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return posixpath.join(url, *parts)


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def redact(url: str) -> str:
    """A URL fit for logs and provenance: no user info, no query string (signed URLs), no fragment, no
    registered secret (:func:`errors.scrub`, which it agrees with on URLs)."""
    url = scrub(str(url))
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL after all (an invalid IPv6 host, ...): scrubbed is all it gets
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def split_secrets(storage_options: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """``(public, secret)``: the storage options split by key (:func:`errors.is_secret_key`, nested mappings
    such as ``client_kwargs`` split alike); ``secret`` holds the secret-looking keys with a value (not None or
    empty), ``public`` everything else but secret-looking keys. ``merge_options(public, secret)`` gives the
    options back (less empty secret keys)."""
    public: dict = {}
    secret: dict = {}
    for key, value in (storage_options or {}).items():
        if is_secret_key(key):
            if value is not None and not (isinstance(value, (str, Mapping, list, tuple)) and not value):
                secret[key] = value
        elif isinstance(value, Mapping):
            pub, sec = split_secrets(value)
            public[key] = pub
            if sec:
                secret[key] = sec
        else:
            public[key] = value
    return public, secret


def merge_options(base: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> dict:
    """``base`` with ``extra`` merged in, nested mappings merged key by key (``extra`` wins)."""
    merged = dict(base or {})
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged


def public_options(storage_options: Mapping[str, Any] | None) -> dict:
    """Storage options with every secret-looking key removed (for reports and provenance)."""
    return split_secrets(storage_options)[0]


_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                   "NoAuthTokenError")
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerDisconnectedError")
_DENIED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain_storage_error(url: str, exc: BaseException) -> Exception | None:
    """A clear error for an object-store failure that is the operator's to fix (no credentials, an
    endpoint that does not answer, access denied), naming the URL and what to set; None for others.
    Missing credentials are a :class:`ConfigError` (not retried); an unreachable endpoint a
    :class:`TransientError` (retried by batches)."""
    from errors import ConfigError

    for e in _chain(exc):
        name, text = type(e).__name__, str(e)
        if name in _NO_CREDENTIALS:
            return ConfigError(f"{redact(url)}: no object-store credentials found; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the machine a role), or pass "
                               "--storage-options")
        if name in _UNREACHABLE or isinstance(e, ConnectionRefusedError):
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the endpoint of the storage options, else AWS's"
            return TransientError(f"{redact(url)}: cannot reach the object store ({endpoint}): check "
                                  f"AWS_ENDPOINT_URL and the network ({name}: {redact(text)})")
        if name in _DENIED or any(code in text for code in _DENIED):
            return ConfigError(f"{redact(url)}: the object store refused the credentials ({name}: {text}); check "
                               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions")
    return None


@contextlib.contextmanager
def storage_errors(url: str):
    """Turn object-store failures that :func:`explain_storage_error` knows into its clear errors."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        clear = explain_storage_error(url, exc)
        if clear is None:
            raise
        raise clear from None


_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def collection_id_from_url(url: str) -> str:
    """A safe collection id from a URL's last path component (``s3://b/city/block-7/`` -> ``block-7``)."""
    name = posixpath.basename(urlsplit(str(url)).path.rstrip("/")) if "://" in str(url) else \
        posixpath.basename(str(url).replace("\\", "/").rstrip("/"))
    return safe_id(name or "collection")


def safe_id(value: str) -> str:
    """``value`` as a file-name-safe id: letters, digits, ``.``, ``_``, ``-``; never ``.``/``..`` or empty."""
    cleaned = _SAFE_ID.sub("_", str(value)).strip("._") or "collection"
    return cleaned[:200]


__all__ = ["filesystem", "fs_options", "bound_retries", "join", "is_local", "redact", "public_options",
           "split_secrets", "merge_options",
           "collection_id_from_url", "safe_id",
           "explain_storage_error", "storage_errors"]
