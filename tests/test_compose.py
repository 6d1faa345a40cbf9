"""docker/compose.yaml scales web and worker replicas that share no data volume."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "compose.yaml"
REPLICATED = ("web", "worker")


def _volume(volume: str | dict) -> str:
    """Short and long (compose v2) syntax alike, as ``source:target[:ro]``."""
    if isinstance(volume, str):
        return volume.removesuffix(":rw")
    return f"{volume['source']}:{volume['target']}" + (":ro" if volume.get("read_only") else "")


def _empty_env_file(tmp_path: Path) -> str:
    """So a developer's docker/.env cannot change what is checked."""
    path = tmp_path / "empty.env"
    path.write_text("")
    return str(path)


def _resolved(tmp_path: Path) -> dict:
    """The file as compose resolves it: by docker-compose where installed, else by YAML."""
    if shutil.which("docker-compose"):
        env = {**os.environ, "DJANGO_SECRET_KEY": "x", "KMS_S3_SECRET_KEY": "y"}
        out = subprocess.run(["docker-compose", "--env-file", _empty_env_file(tmp_path),
                              "-f", str(COMPOSE),
                              "config"], env=env,
                             capture_output=True, text=True, check=True).stdout
        return yaml.safe_load(out)
    # without it: each ${NAME:-default} as its default, as the empty env file gives
    return yaml.safe_load(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", COMPOSE.read_text()))


def test_replicas_share_no_volume_and_reach_files_and_models_in_the_object_store(
    tmp_path: Path,
) -> None:
    services = _resolved(tmp_path)["services"]
    for name in REPLICATED:
        service = services[name]
        assert not service.get("volumes"), (name, service.get("volumes"))
        assert "ports" not in service, name  # a fixed host port would forbid --scale
        assert service["environment"]["KMS_FILE_STORAGE"] == "s3"
        assert service["environment"]["KMS_MODEL_STORAGE"] == "default"
        assert "container_name" not in service
    assert services["proxy"]["ports"] and "trainer" in services
    assert [_volume(v) for v in services["trainer"]["volumes"]] == ["models:/models"]
    mounting_models = [name for name, service in services.items()
                       if any(_volume(v).startswith("models:") for v in service.get("volumes", []))]
    assert mounting_models == ["trainer"]
    app = ("web", "worker", "trainer", "beat")
    assert {services[name]["environment"]["KMS_MODELS_DIR"] for name in app} == {"/models"}


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_refuses_to_start_without_the_object_store_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KMS_S3_SECRET_KEY"}
    env["DJANGO_SECRET_KEY"] = "x"
    result = subprocess.run(["docker-compose", "--env-file", _empty_env_file(tmp_path),
                             "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "KMS_S3_SECRET_KEY" in result.stderr
