"""docker/compose.yaml scales web and worker replicas that share no data volume."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "compose.yaml"
REPLICATED = ("web", "worker")


def _resolved() -> dict:
    """The file as compose resolves it: by docker-compose where installed, else YAML anchors."""
    if shutil.which("docker-compose"):
        env = {**os.environ, "DJANGO_SECRET_KEY": "x", "KMS_S3_SECRET_KEY": "y"}
        out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], env=env,
                             capture_output=True, text=True, check=True).stdout
        return yaml.safe_load(out)
    return yaml.safe_load(COMPOSE.read_text())


def test_replicas_share_nothing_but_read_only_models_and_reach_the_object_store() -> None:
    services = _resolved()["services"]
    for name in REPLICATED:
        service = services[name]
        volumes = [str(v) if isinstance(v, str) else f"{v['source']}:{v['target']}"
                   for v in service.get("volumes", [])]
        assert volumes == ["models:/models:ro"], (name, volumes)
        assert "ports" not in service, name  # a fixed host port would forbid --scale
        assert service["environment"]["KMS_FILE_STORAGE"] == "s3"
        assert "container_name" not in service
    assert services["proxy"]["ports"] and "trainer" in services
    assert [str(v) for v in services["trainer"]["volumes"]] in (
        ["models:/models"], ["models:/models:rw"])


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_refuses_to_start_without_the_object_store_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KMS_S3_SECRET_KEY"}
    env["DJANGO_SECRET_KEY"] = "x"
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "KMS_S3_SECRET_KEY" in result.stderr
