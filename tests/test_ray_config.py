"""The Ray Serve config in examples/ and the KubeRay manifest that mirrors it agree, and build."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from conftest import ROOT

SERVE_CONFIG = ROOT / "examples" / "ray-serve-app.yaml"
RAY_SERVICE = ROOT / "examples" / "kuberay-rayservice.yaml"


def _load(path: Any) -> Any:
    return yaml.safe_load(path.read_text())


def test_rayservice_mirrors_the_serve_config() -> None:
    config = _load(SERVE_CONFIG)
    service = _load(RAY_SERVICE)
    assert service["apiVersion"] == "ray.io/v1"
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == config


# Ray Serve's own models use pydantic features that pydantic 2 deprecates.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_serve_config_names_our_builder_and_settings() -> None:
    config = _load(SERVE_CONFIG)
    assert config["http_options"]["port"] == 1337
    (app,) = config["applications"]
    assert app["import_path"] == "interference.ray.app:build"
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from interference.ray.app import build

    application = build(app["args"])  # settings are validated; an unknown key fails here
    assert application is not None


def test_ray_version_agrees_with_the_pin() -> None:
    service = _load(RAY_SERVICE)
    pin = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if "ray[serve]==" in line)
    assert service["spec"]["rayClusterConfig"]["rayVersion"] in pin
