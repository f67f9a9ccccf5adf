"""Start the Dask cluster of ZipMap Pipeline on a SLURM site and keep it up.

    python infra/slurm/start_cluster.py [--config infra/slurm/jobqueue.yaml] [--jobs N | --adapt MIN MAX]

Run it on a login node (or in a long-running job) inside the project's environment. It loads the
jobqueue configuration, starts the scheduler here, submits the worker jobs and prints the address
to give the batch flow (``zipmap batch MANIFEST OUT --cluster ADDRESS``, or the ``cluster`` parameter
of the Prefect deployments). Ctrl-C cancels the jobs and stops the scheduler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dask
import yaml

DEFAULT_CONFIG = Path(__file__).with_name("jobqueue.yaml")


def load_config(path: str | Path = DEFAULT_CONFIG) -> dict:
    """The ``jobqueue.slurm`` section of ``path``, merged into Dask's configuration (returned too)."""
    with open(path) as f:
        config = yaml.safe_load(f)
    dask.config.update(dask.config.config, config, priority="new")
    return config["jobqueue"]["slurm"]


def make_cluster(path: str | Path = DEFAULT_CONFIG, **overrides):
    """A ``dask_jobqueue.SLURMCluster`` from the configuration (no jobs submitted yet)."""
    from dask_jobqueue import SLURMCluster

    load_config(path)
    return SLURMCluster(**overrides)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--jobs", type=int, default=1, help="worker jobs to submit (one GPU each)")
    group.add_argument("--adapt", type=int, nargs=2, metavar=("MIN", "MAX"), help="adapt between MIN and MAX jobs")
    p.add_argument("--print-job-script", action="store_true", help="print the job script and exit")
    args = p.parse_args(argv)
    cluster = make_cluster(args.config)
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return 0
    if args.adapt:
        cluster.adapt(minimum_jobs=args.adapt[0], maximum_jobs=args.adapt[1])
    else:
        cluster.scale(jobs=args.jobs)
    print(f"scheduler: {cluster.scheduler_address}")
    print(f"dashboard: {cluster.dashboard_link}")
    print(f"run a batch: zipmap batch MANIFEST OUT --cluster {cluster.scheduler_address}")
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
