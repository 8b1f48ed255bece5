"""cluster.yaml passes Ray's own cluster-config schema and exposes nothing but SSH."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    # What `ray up` does: fill the provider's defaults, then check against ray-schema.json.
    validate_config(prepare_config(config))  # raises jsonschema.ValidationError when invalid
    assert config["head_node_type"] in config["available_node_types"]
    assert any(t != config["head_node_type"] for t in config["available_node_types"]), "a worker node type exists"


def test_cluster_yaml_opens_no_dashboard_or_client_port_and_uses_token_auth() -> None:
    text = CLUSTER.read_text()
    config = yaml.safe_load(text)
    assert "security_group" not in config["provider"], "the launcher's default group admits SSH only"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in text
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "patchtune" in c for c in config["setup_commands"])
    assert any("dataset-fashion-mnist" in c for c in config["setup_commands"])
