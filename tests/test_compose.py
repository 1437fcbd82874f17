"""docker-compose.yml is for users (no Docker engine runs here): check what it names."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_database_is_the_official_pgvector_image_with_a_volume_and_healthcheck():
    compose = load()
    db = compose["services"]["db"]
    assert db["image"].startswith("pgvector/pgvector:pg")
    assert any(v.startswith("pgdata:") for v in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert set(compose["volumes"]) >= {"pgdata", "appdata"}


def test_app_talks_to_that_database_and_keeps_its_data():
    services = load()["services"]
    app = services["app"]
    env = app["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    user, password, database = (services["db"]["environment"][k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"))
    assert env["DATABASE_URL"].endswith(f"{user}:{password}@db:5432/{database}")
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert any(v.startswith("appdata:") and v.endswith(env["EXPERT_STUDIO_DATA_DIR"]) for v in app["volumes"])
    assert any(port.endswith("8501:8501") for port in app["ports"])
    assert (ROOT / "Dockerfile").is_file() and app["build"] == "."


def test_app_is_published_on_the_hosts_loopback_only():
    """Inside the container the app listens on 0.0.0.0; only the host's 127.0.0.1 reaches it, and the compose file
    says so to the app (EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY), which otherwise would ask for a login."""
    services = load()["services"]
    for name in ("app", "app-gpu"):
        service = services[name]
        assert service["ports"] == ["127.0.0.1:8501:8501"], name
        assert service["environment"]["EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY"] == "true", name
        assert "EXPERT_STUDIO_PASSWORD_HASH" not in service["environment"]  # no secret in the compose file
    assert "--server.address=0.0.0.0" in (ROOT / "Dockerfile").read_text()  # needed for the port to be published


def test_gpu_variant_reserves_nvidia_gpus_behind_a_profile():
    services = load()["services"]
    gpu = services["app-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"] == services["app"]["environment"]  # same app, only the GPU differs
    assert "deploy" not in services["app"]  # the default service runs on machines without a GPU


def test_dockerfile_installs_the_pinned_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in dockerfile
    assert "streamlit_app.py" in dockerfile
