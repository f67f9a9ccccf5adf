"""Object-store credentials by reference: a flow gets ``credentials="env:VAR"``, never the secret values.

Prefect stores a flow run's parameters in its database (and shows them in its UI), so the flows'
``storage_options`` parameter carries no secret values (:func:`refuse_plain_secrets`); secrets come as a
reference, resolved where the I/O happens (the flow process, each Dask worker):

- ``env:VARNAME``: a JSON object of storage options in that environment variable (of the process that
  resolves it: the LocalCluster workers a batch starts inherit the flow process's environment);
- ``file:/path/creds.json``: a JSON file of storage options (readable where it is resolved);
- ``block:NAME``: a Prefect ``Secret`` block holding that JSON object (or the object itself): works on any
  worker that reaches the Prefect API.

The resolved options are merged over the public ones (:func:`with_credentials`) and their secret values
registered with :func:`errors.scrub` in the process that resolved them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from errors import ConfigError, is_secret_key, register_secrets, register_url_secrets, scrub, url_secrets
from storage.urls import merge_options, split_secrets

CREDENTIALS_ENV = "ZIPMAP_RUN_CREDENTIALS"  # where `zipmap batch` puts --storage-options secrets for its run
FORMS = "env:VARNAME (a JSON object in that variable), file:PATH (a JSON file) or block:NAME (a Prefect Secret block)"


def _load(kind: str, name: str):
    if kind == "env":
        text = os.environ.get(name)
        if text is None:
            raise ConfigError(f"credentials env:{name}: the environment variable {name} is not set in this process "
                              "(Dask workers started elsewhere need it in their own environment; or use block:NAME)")
        return text
    if kind == "file":
        try:
            with open(os.path.expanduser(name)) as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"credentials file:{name}: cannot read it ({exc.strerror or type(exc).__name__})") \
                from None
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except Exception as exc:  # noqa: BLE001  (no such block, no API: one line, never the block's content)
        raise ConfigError(f"credentials block:{name}: cannot load the Prefect Secret block {name!r} "
                          f"({type(exc).__name__}); create it (Secret(value={{...}}).save({name!r}))") from None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def resolve_credentials(reference: str | None) -> dict:
    """The storage options a credentials reference (``env:``, ``file:``, ``block:``) stands for, their secret
    values registered with :func:`errors.scrub`; ``{}`` for none. Errors are one line that names the reference,
    never its content (nor a secret given where a reference belongs)."""
    if not reference:
        return {}
    kind, sep, name = str(reference).strip().partition(":")
    kind, name = kind.strip().lower(), name.strip()
    if not sep or not name or kind not in ("env", "file", "block"):
        raise ConfigError(f"credentials: expected a reference, {FORMS}; not a value")
    raw = _load(kind, name)
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"credentials {kind}:{name}: not a JSON object of storage options "
                          '(e.g. {"key": "...", "secret": "..."})')
    options = dict(raw)
    register_secrets(options)
    return options


def with_credentials(storage_options: Mapping[str, Any] | None, credentials: str | None) -> dict | None:
    """The storage options to do I/O with: ``storage_options`` with the options ``credentials`` refers to
    merged over them (nested ``client_kwargs`` key by key); every secret value registered."""
    register_secrets(storage_options)
    extra = resolve_credentials(credentials)
    if not extra:
        return dict(storage_options) if storage_options is not None else None
    return merge_options(storage_options, extra)


def secret_names(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The (dotted) names of the values in ``options`` (the secret part of :func:`storage.urls.split_secrets`)."""
    names = []
    for key, value in options.items():
        if isinstance(value, Mapping) and not is_secret_key(key):  # e.g. client_kwargs: name what is inside
            names += secret_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def refuse_plain_secrets(where: str, storage_options: Mapping[str, Any] | None = None, **urls: str | None) -> None:
    """Raise :class:`errors.ConfigError` (one line) when a flow would be given secret values as parameters,
    which Prefect keeps with the run: ``storage_options`` with secret-looking keys, or a URL parameter
    (``urls``: name -> URL) with user info or a signed query. The secrets are registered first, so even the
    refusal's traceback cannot quote them."""
    _, secret = split_secrets(storage_options)
    if secret:
        register_secrets(secret)
        raise ConfigError(f"{where}: storage_options holds secret values ({', '.join(secret_names(secret))}), which "
                          "Prefect would keep with the run; pass them by reference instead: credentials="
                          f"{FORMS}; keep only public options (endpoint_url, region, ...) in storage_options")
    for name, url in urls.items():
        if url and url_secrets(url):
            register_url_secrets(url)
            raise ConfigError(f"{where}: {name} {scrub(url)!r} carries credentials (user info or a signed query), "
                              "which Prefect would keep with the run; give the URL without them and the "
                              f"credentials by reference: credentials={FORMS}")


__all__ = ["resolve_credentials", "with_credentials", "refuse_plain_secrets", "secret_names", "CREDENTIALS_ENV",
           "FORMS"]
