"""Static checks of infra/: every file parses and passes a real validator with its bundled schema.

- compose: the Compose Specification's JSON schema (check-jsonschema's vendored ``compose-spec``);
- Kubernetes: ``kubernetes-validate`` (the API schemas of Kubernetes 1.37, strict: unknown fields fail);
  the Dask operator's custom resources against their CRD's required structure, with the pod and
  service specs inside them validated as real Pods and Services;
- SLURM: dask-jobqueue's own configuration loader and job-script writer;
- Docker: the images install the project's own wheel with the torch pin of pyproject.toml, as a
  non-root user.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.37.0"
BIN = Path(sys.executable).parent

# The required structure of the Dask operator's resources (kubernetes.dask.org/v1, after the CRD
# templates of dask-kubernetes): the nested pod and service specs are checked by kubernetes-validate.
_WORKER = {"type": "object", "required": ["spec"],
           "properties": {"replicas": {"type": "integer", "minimum": 0}, "spec": {"type": "object"}}}
DASK_SCHEMAS = {
    "DaskCluster": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "kubernetes.dask.org/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["scheduler", "worker"], "additionalProperties": False,
                 "properties": {
                     "idleTimeout": {"type": "integer"},
                     "scheduler": {"type": "object", "required": ["spec", "service"], "additionalProperties": False,
                                   "properties": {"spec": {"type": "object"}, "service": {"type": "object"}}},
                     "worker": _WORKER}}}},
    "DaskWorkerGroup": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "kubernetes.dask.org/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["cluster", "worker"], "additionalProperties": False,
                 "properties": {"cluster": {"type": "string"}, "worker": _WORKER}}}},
}


def _docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _validate_k8s(resource):
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def _pod(spec, name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_compose_file_matches_the_compose_specification(tmp_path):
    compose = INFRA / "compose" / "compose.yaml"
    p = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    # the validator does reject a broken file (a typo in a service key)
    broken = tmp_path / "compose.yaml"
    broken.write_text(compose.read_text().replace("    depends_on: [dask-scheduler]", "    depends_onn: [x]", 1))
    p = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "depends_onn" in p.stdout + p.stderr


def test_compose_stack_has_every_part():
    (doc,) = _docs(INFRA / "compose" / "compose.yaml")
    services = doc["services"]
    assert {"postgres", "prefect-server", "object-store", "dask-scheduler", "dask-worker", "dask-worker-gpu",
            "prefect-worker", "setup"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    gpu = services["dask-worker-gpu"]
    assert "GPU=1" in gpu["command"] and gpu["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert services["prefect-worker"]["command"][-4:] == ["--pool", "zipmap", "--type", "process"]
    assert "zipmap deploy" in " ".join(services["setup"]["command"])


def test_kubernetes_manifests_validate():
    docs = _docs(INFRA / "kubernetes" / "prefect-worker.yaml")
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Job"}
    for d in docs:
        _validate_k8s(d)
    worker = next(d for d in docs if d["kind"] == "Deployment")
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][-4:] == ["--pool", "zipmap", "--type",
                                                                                "process"]
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in settings)  # credentials only in the Secret

    cluster_docs = _docs(INFRA / "kubernetes" / "dask-cluster.yaml")
    assert [d["kind"] for d in cluster_docs] == ["DaskCluster", "DaskWorkerGroup"]
    for d in cluster_docs:
        jsonschema.validate(d, DASK_SCHEMAS[d["kind"]])
    cluster, gpu = cluster_docs
    _validate_k8s(_pod(cluster["spec"]["scheduler"]["spec"], "scheduler"))
    _validate_k8s({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zipmap-scheduler"},
                   "spec": cluster["spec"]["scheduler"]["service"]})
    _validate_k8s(_pod(cluster["spec"]["worker"]["spec"], "cpu-worker"))
    _validate_k8s(_pod(gpu["spec"]["worker"]["spec"], "gpu-worker"))
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    container = gpu["spec"]["worker"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and "GPU=1" in container["args"]


def test_kubernetes_validator_rejects_a_broken_manifest():
    (worker,) = [d for d in _docs(INFRA / "kubernetes" / "prefect-worker.yaml") if d["kind"] == "Deployment"]
    worker["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(worker)
    (cluster, _) = _docs(INFRA / "kubernetes" / "dask-cluster.yaml")
    del cluster["spec"]["scheduler"]["service"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, DASK_SCHEMAS["DaskCluster"])


def test_prefect_server_helm_values_parse():
    (values,) = _docs(INFRA / "kubernetes" / "prefect-server-values.yaml")
    assert values["global"]["prefect"]["image"]["prefectTag"].startswith("3.9.1")
    assert values["secret"] == {"create": False, "name": "prefect-server-postgresql-connection"}


def test_slurm_spec_loads_with_dask_jobqueue(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.chdir(tmp_path)  # the log directory is relative
    spec = importlib.util.spec_from_file_location("start_cluster", INFRA / "slurm" / "start_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cluster = module.make_cluster(INFRA / "slurm" / "jobqueue.yaml")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -t 04:00:00", "#SBATCH --cpus-per-task=8",
                 "--resources GPU=1", "--preload tasks.batch", "--nthreads 1", "--local-directory $TMPDIR",
                 "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"):
        assert line in script, (line, script)


def test_dockerfile_builds_from_the_pyproject_as_non_root():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    assert text.count(f"pip install {torch_pin} --index-url") == 2  # CPU and CUDA variants, same version
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert {"cpu", "cuda", "wheel"} <= set(stages)
    for target in ("cpu", "cuda"):
        block = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "zipmap_pipeline-*.whl" in block and "USER zipmap" in block
    assert "COPY pyproject.toml" in text and "AWS_SECRET" not in text and "PREFECT_API_KEY" not in text
