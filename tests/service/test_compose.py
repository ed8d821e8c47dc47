"""The container deployment, read as data: docker-compose.yml, its CPU, main-host and GPU-host files, the Dockerfile.

Docker cannot run here, so these tests check what Compose would be told to do.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from bnlenet.local.redis_server import APPENDFSYNC

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's merge tags (``!reset``, ``!override``)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: {"__compose__": "reset"})
ComposeLoader.add_constructor(
    "!override", lambda loader, node: {"__compose__": "override", "value": loader.construct_object(node, deep=True)}
)


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path) for every volume of a service."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[target] = source
    return out


def test_compose_services_exist(services: dict[str, Any]) -> None:
    assert {"redis", "seaweedfs", "api", "worker"} <= set(services)


def test_compose_redis_persists_to_named_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    cmd = command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == APPENDFSYNC  # what bnlenet up and the tests run
    source = mounts(redis)["/data"]
    assert source in compose["volumes"], "Redis data must live in a named volume, not the container"


def test_compose_worker_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia"]
    assert gpu and "gpu" in gpu[0]["capabilities"]
    assert gpu[0].get("count") == 1 or len(gpu[0].get("device_ids", [])) == 1, "one worker per GPU"


def test_compose_api_and_worker_share_models_through_the_object_store(compose: dict[str, Any],
                                                                     services: dict[str, Any]) -> None:
    store = services["seaweedfs"]
    assert mounts(store).get("/data") in compose["volumes"], "the object store keeps its data in a named volume"
    assert "mini" in command(store) and "-s3.port=8333" in command(store)
    for name in ("api", "worker"):
        env = environment(services[name])
        assert env["CHECKPOINT_DIR"].startswith("s3://" + environment(store)["S3_BUCKET"] + "/")
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333"
        assert env["AWS_ACCESS_KEY_ID"] == environment(store)["AWS_ACCESS_KEY_ID"]
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY:?")  # no default secret
        assert services[name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
        assert env["CHECKPOINT_DIR"] not in mounts(services[name]), "no shared checkpoint directory"


def test_compose_several_hosts_share_only_redis_and_the_object_store(services: dict[str, Any]) -> None:
    main = load(ROOT / "docker-compose.main-host.yml")["services"]
    assert "--requirepass" in command(main["redis"])
    assert command(main["redis"])[command(main["redis"]).index("--appendfsync") + 1] == APPENDFSYNC
    assert all(p.startswith("${PRIVATE_IP") for name in ("redis", "seaweedfs") for p in main[name]["ports"])
    for name in ("api", "worker"):
        assert environment(main[name])["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD}@redis:6379")
    gpu = load(ROOT / "docker-compose.gpu-host.yml")["services"]
    assert list(gpu) == ["worker"]
    env, single = environment(gpu["worker"]), environment(services["worker"])
    assert env["CHECKPOINT_DIR"] == single["CHECKPOINT_DIR"]  # the same bucket and prefix
    for required in ("REDIS_URL", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"):
        assert env[required].startswith("${" + required.replace("AWS_SECRET_ACCESS_KEY", "S3_SECRET_KEY") + ":?")
    assert command(gpu["worker"]) == command(services["worker"])
    assert gpu["worker"]["deploy"] == services["worker"]["deploy"]
    assert set(mounts(gpu["worker"])) == {"/data"}


def test_compose_api_and_worker_share_the_data_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    sources = {mounts(services[name]).get(environment(services[name])["DATA_DIR"]) for name in ("api", "worker")}
    assert len(sources) == 1 and sources <= set(compose["volumes"])


def test_compose_api_and_worker_reach_redis(services: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        assert environment(services[name])["REDIS_URL"].startswith("redis://redis:6379")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name in ("redis", "seaweedfs", "api", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(services["seaweedfs"]["healthcheck"]["test"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_compose_api_runs_the_guarded_server(services: dict[str, Any]) -> None:
    cmd = command(services["api"])
    assert cmd[:3] == ["python", "-m", "app.edge"]
    assert cmd[cmd.index("--port") + 1] == "8000"
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])


def test_compose_worker_runs_celery_on_the_worker_app(services: dict[str, Any]) -> None:
    cmd = command(services["worker"])
    assert cmd[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert cmd[cmd.index("--concurrency") + 1] == "1"


def test_compose_api_requires_a_token(services: dict[str, Any]) -> None:
    token = environment(services["api"])["API_TOKEN"]
    # ${VAR:?message} makes Compose refuse to start while the variable is unset or empty.
    assert re.fullmatch(r"\$\{API_TOKEN:\?[^}]+\}", token), token


def test_compose_cpu_override_drops_only_the_gpu_reservation() -> None:
    override = load(COMPOSE_CPU)
    assert set(override["services"]) == {"worker"}
    assert override["services"]["worker"] == {"deploy": {"__compose__": "reset"}}


def test_dockerfile_builds_one_image_for_api_and_worker(services: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN .*pip install", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    cmd = re.findall(r"^CMD (.+)$", text, re.M)[-1]
    argv = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "app.edge"]
    for name in ("api", "worker"):
        assert services[name]["build"] in (".", {"context": "."})


DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bnlenet.json"


def test_compose_monitoring_profile_runs_prometheus_and_grafana(services: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name in ("redis", "api", "worker"):
        assert "profiles" not in services[name], f"{name} must start without a profile"
    prom_mounts = mounts(services["prometheus"])
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml:ro".split(":")[0]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["api:8000"]
    graf_mounts = mounts(services["grafana"])
    assert graf_mounts["/var/lib/grafana/dashboards"] == "./deploy/grafana/dashboards"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "bnlenet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_flower_profile_has_its_own_port(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    assert command(flower)[:4] == ["celery", "-A", "worker.celery_app", "flower"]
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    assert flower["build"]["target"] == "flower"
    assert re.search(r"^FROM app AS flower$", DOCKERFILE.read_text(), re.M)


def test_compose_api_metrics_directory_is_emptied_by_the_entry_point(services: dict[str, Any]) -> None:
    assert environment(services["api"])["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert re.search(r'^ENTRYPOINT \["bnlenet-entrypoint"\]$', DOCKERFILE.read_text(), re.M)
    assert "find \"$PROMETHEUS_MULTIPROC_DIR\" -mindepth 1 -delete" in (DEPLOY / "entrypoint.sh").read_text()


def _exported_names(redis_url: str) -> set[str]:
    """Every sample name /metrics carries, read from a real scrape's families with their suffixes."""
    import redis
    from prometheus_client.parser import text_string_to_metric_families

    from bnlenet.metrics import JobStoreCollector, render

    text = render([JobStoreCollector(redis.Redis.from_url(redis_url), "celery:training")]).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


def test_grafana_dashboard_queries_name_exported_metrics(redis_server: Any) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 4
    named = {m for e in exprs for m in re.findall(r"\bbnlenet_[a-z_]+", e)}
    exported = _exported_names(redis_server.database_url(13))
    assert named and named <= exported, named - exported
    for needed in ("bnlenet_predict_requests_total", "bnlenet_queue_length", "bnlenet_jobs",
                   "bnlenet_training_examples_per_second"):
        assert needed in named
