"""Prefect deployments of the pipeline, created against whatever API ``PREFECT_API_URL`` names.

    zipmap deploy [--pool zipmap] [--cron "0 2 * * *"] [--timezone UTC] [--param KEY=VALUE ...]

Three deployments, all in the process work pool ``zipmap`` (created when missing):

- ``reconstruct-batch/nightly``: the batch flow on a cron schedule (default 02:00 UTC); parameters
  ``manifest`` (a URL) or ``prefix`` (listed at run time, only what changed within ``since``),
  ``out``, ``cluster`` (a Dask scheduler address; empty: a LocalCluster), ``weights``;
- ``reconstruct-batch/on-demand``: the same flow without a schedule
  (``prefect deployment run reconstruct-batch/on-demand --param manifest=s3://... --param out=s3://...``);
- ``reconstruct-collection/on-demand``: one collection (``--param src=... --param out=...``).

The entrypoints are module paths (``flows.batch.reconstruct_batch``), so a Prefect worker runs them
from the installed package (a container image or a virtual environment), not from a copied folder.
Defaults come from :mod:`settings`. Deployment parameters are stored by Prefect, so secrets never go
there: ``--param storage_options=...`` with secret values (or a URL parameter with credentials) is
refused; give ``--param credentials=block:NAME`` (a Prefect Secret block holding the JSON storage
options) or ``env:VAR`` set on the workers (:mod:`tasks.credentials`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from errors import ConfigError
from settings import Settings, load_settings

POOL_TYPE = "process"


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("PREFECT_API_URL is not set: start a Prefect server (`prefect server start`) and "
                          "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or your server's /api URL)")
    return url


def check_api() -> str:
    """The API URL, after making sure a Prefect server answers there."""
    from prefect.client.orchestration import get_client

    url = _api_url()

    async def health():
        async with get_client() as client:
            return await client.api_healthcheck()

    error = asyncio.run(health())
    if error is not None:
        raise ConfigError(f"no Prefect server answers at PREFECT_API_URL={url} ({type(error).__name__}: {error}); "
                          "start one (`prefect server start`) or fix the URL")
    return url


def ensure_pool(name: str, create: bool = True) -> bool:
    """Make sure the work pool ``name`` exists (a process pool); True when it was created here."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    async def run() -> bool:
        async with get_client() as client:
            try:
                await client.read_work_pool(name)
                return False
            except ObjectNotFound:
                if not create:
                    raise ConfigError(f"work pool {name!r} does not exist on this Prefect server: create it "
                                      f"(`prefect work-pool create {name} --type {POOL_TYPE}`) or leave out "
                                      "--no-create-pool") from None
                await client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE))
                return True

    return asyncio.run(run())


def batch_parameters(settings: Settings, overrides: Mapping[str, str] | None = None) -> dict:
    """Default parameters of the batch deployments (empty settings are left out: the flow's defaults)."""
    params = {"manifest": settings.manifest, "prefix": settings.prefix, "out": settings.out,
              "cluster": settings.cluster, "weights": settings.weights, "preset": settings.preset,
              "workers": settings.workers,
              "max_voxels": settings.max_voxels}
    if settings.prefix:
        params["since"] = settings.since
    params.update(overrides or {})
    return {k: v for k, v in params.items() if v not in ("", None)}


def deploy(settings: Settings | None = None, pool: str | None = None, cron: str | None = None,
           timezone: str | None = None, parameters: Mapping[str, str] | None = None,
           create_pool: bool = True) -> dict[str, str]:
    """Create (or update) the three deployments; returns ``{"flow/deployment": id}``."""
    from prefect.flows import EntrypointType
    from prefect.schedules import Cron

    from flows.batch import reconstruct_batch
    from flows.reconstruct import reconstruct_collection
    from tasks.credentials import refuse_plain_secrets

    settings = settings or load_settings()
    pool = pool or settings.work_pool
    cron = cron or settings.nightly_cron
    timezone = timezone or settings.timezone
    batch_params = batch_parameters(settings, parameters)
    refuse_plain_secrets("zipmap deploy", batch_params.get("storage_options"),
                         **{k: batch_params.get(k) for k in ("manifest", "prefix", "out", "weights")})
    check_api()
    ensure_pool(pool, create_pool)
    try:
        schedule = Cron(cron, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"schedule {cron!r} ({timezone}) is not a valid cron expression: {exc}") from None
    common = {"work_pool_name": pool, "entrypoint_type": EntrypointType.MODULE_PATH}
    deployments = [
        reconstruct_batch.to_deployment(name="nightly", schedule=schedule, parameters=batch_params,
                                        description="City batch on a schedule", tags=["zipmap", "nightly"],
                                        **common),
        reconstruct_batch.to_deployment(name="on-demand", parameters=batch_params,
                                        description="A batch, triggered by hand or by an event",
                                        tags=["zipmap"], **common),
        reconstruct_collection.to_deployment(name="on-demand", description="One collection",
                                             tags=["zipmap"], **common),
    ]
    ids = {}
    for d in deployments:
        ids[f"{d.flow_name}/{d.name}"] = str(d.apply(work_pool_name=pool))
    return ids


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` pairs (as ``prefect deployment run --param``); a VALUE that reads as JSON (``4``,
    ``true``, ``{"a": 1}``) is taken as that, anything else as text."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


__all__ = ["deploy", "check_api", "ensure_pool", "batch_parameters", "parse_params"]
