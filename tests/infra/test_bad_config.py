"""Bad configuration ends with one clear line that says what to fix, not a traceback.

Every case runs the real `zipmap` command in a subprocess with the environment an operator would
have got wrong: an unreachable scheduler, an unreachable object store, missing credentials, no or a
dead Prefect API, an unknown work pool, a settings file with a typo.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from settings import load_settings

ZIPMAP = str(Path(sys.executable).parent / "zipmap")
pytestmark = pytest.mark.slow  # each case starts the CLI in a new process (about 5 s)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def _run(args, tmp_path, **env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_API", "ZIPMAP_"))}
    env.update({"HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect-home"),
                "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s", "AWS_RETRY_MODE": "standard",
                "AWS_MAX_ATTEMPTS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.update({k: v for k, v in env_changes.items() if v is not None})
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
    p = subprocess.run([ZIPMAP, *args], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_unreachable_scheduler(tmp_path):
    (tmp_path / "m.csv").write_text("collection_id,source\nc0,/nowhere\n")
    p = _run(["batch", "m.csv", "out", "--cluster", f"tcp://127.0.0.1:{_dead_port()}"], tmp_path)
    assert p.returncode == 2
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:" in p.stderr and "dask scheduler" in p.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_object_store(tmp_path):
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    p = _run(["manifest", "s3://city/survey/", "m.parquet"], tmp_path, AWS_ENDPOINT_URL=endpoint,
             AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1")
    assert p.returncode == 2
    assert f"s3://city/survey/: cannot reach the object store ({endpoint}): check AWS_ENDPOINT_URL" in p.stderr
    p = _run(["batch", "s3://city/manifest.csv", "out"], tmp_path, AWS_ENDPOINT_URL=endpoint,
             AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1",
             ZIPMAP_RETRY_PATIENCE="1")  # the message is the point here, not a minute of retries
    assert p.returncode == 2 and "s3://city/manifest.csv: cannot reach the object store" in p.stderr


def test_missing_credentials(tmp_path, s3_endpoint):
    p = _run(["manifest", "s3://city/survey/", "m.parquet"], tmp_path, AWS_ENDPOINT_URL=s3_endpoint,
             AWS_DEFAULT_REGION="us-east-1")
    assert p.returncode == 2
    assert "s3://city/survey/: no object-store credentials found; set AWS_ACCESS_KEY_ID" in p.stderr


def test_no_or_dead_prefect_api(tmp_path):
    p = _run(["deploy"], tmp_path)
    assert p.returncode == 2 and "PREFECT_API_URL is not set" in p.stderr and "prefect server start" in p.stderr
    url = f"http://127.0.0.1:{_dead_port()}/api"
    p = _run(["deploy"], tmp_path, PREFECT_API_URL=url)
    assert p.returncode == 2 and f"no Prefect server answers at PREFECT_API_URL={url}" in p.stderr


def test_unknown_work_pool(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    p = _run(["deploy", "--pool", "nightly-gpus", "--no-create-pool"], tmp_path,
             PREFECT_API_URL=PREFECT_API_URL.value())
    assert p.returncode == 2
    assert "work pool 'nightly-gpus' does not exist" in p.stderr
    assert "prefect work-pool create nightly-gpus --type process" in p.stderr


def test_bad_settings(tmp_path):
    (tmp_path / "zipmap.toml").write_text('[zipmap]\nwork_pool = "zipmap"\nnighty_cron = "0 3 * * *"\n')
    p = _run(["deploy"], tmp_path)
    assert p.returncode == 2 and "unknown setting(s) ['nighty_cron']" in p.stderr
    (tmp_path / "zipmap.toml").write_text('[zipmap]\nworkers = "many"\n')
    p = _run(["deploy"], tmp_path)
    assert p.returncode == 2 and "setting 'workers' must be an integer" in p.stderr


def test_settings_layers(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[zipmap]\nnightly_cron = "30 1 * * *"\nworkers = 4\nout = "s3://city/out"\n')
    s = load_settings(f, environ={"ZIPMAP_WORKERS": "8"})
    assert (s.nightly_cron, s.workers, s.out, s.work_pool, s.timezone) == ("30 1 * * *", 8, "s3://city/out",
                                                                          "zipmap", "UTC")
    assert load_settings(environ={}).nightly_cron == "0 2 * * *"
    with pytest.raises(ValueError, match="settings file not found"):
        load_settings(tmp_path / "missing.toml")


def test_settings_example_lists_the_defaults():
    example = Path(__file__).resolve().parents[2] / "infra" / "settings.example.toml"
    from settings import Settings

    assert load_settings(example, environ={}) == Settings()
