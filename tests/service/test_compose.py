"""The container deployment, read as data: docker-compose.yml, its CPU override and the Dockerfile.

Docker cannot run here, so these tests check what Compose would be told to do.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

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
    assert {"redis", "api", "worker"} <= set(services)


def test_compose_redis_persists_to_named_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    cmd = command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    source = mounts(redis)["/data"]
    assert source in compose["volumes"], "Redis data must live in a named volume, not the container"


def test_compose_worker_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia"]
    assert gpu and "gpu" in gpu[0]["capabilities"]
    assert gpu[0].get("count") == 1 or len(gpu[0].get("device_ids", [])) == 1, "one worker per GPU"


def test_compose_api_and_worker_share_the_checkpoint_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    sources = []
    for name in ("api", "worker"):
        checkpoint_dir = environment(services[name])["CHECKPOINT_DIR"]
        source = mounts(services[name]).get(checkpoint_dir)
        assert source is not None, f"{name}: nothing mounted at CHECKPOINT_DIR={checkpoint_dir}"
        sources.append(source)
    assert sources[0] == sources[1]
    assert sources[0] in compose["volumes"]


def test_compose_api_and_worker_share_the_data_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    sources = {mounts(services[name]).get(environment(services[name])["DATA_DIR"]) for name in ("api", "worker")}
    assert len(sources) == 1 and sources <= set(compose["volumes"])


def test_compose_api_and_worker_reach_redis(services: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        assert environment(services[name])["REDIS_URL"].startswith("redis://redis:6379")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name in ("redis", "api", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
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
