"""Settings: embedded defaults need no services; production refuses placeholder secrets."""

from __future__ import annotations

import pytest

from ltx2trainer.api import create_app
from ltx2trainer.settings import Settings


def test_embedded_defaults_live_under_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'ltx2trainer.db'}"
    assert settings.broker_url.startswith("filesystem://")
    assert settings.storage_url == (tmp_path / "storage").resolve().as_uri()
    assert settings.model == "tiny" and str(settings.price_per_step) == "0.0048"


def test_development_secrets_are_generated_once_and_shared(tmp_path):
    first, second = Settings(data_dir=tmp_path), Settings(data_dir=tmp_path)
    assert first.secret("webhook_secret").startswith("whsec_")
    assert first.secret("webhook_secret") == second.secret("webhook_secret")
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0  # readable by the owner only


def test_production_refuses_to_start_without_its_secrets(tmp_path):
    with pytest.raises(RuntimeError, match="LTX2T_WEBHOOK_SECRET"):
        create_app(Settings(data_dir=tmp_path, environment="production"))
    with pytest.raises(RuntimeError, match="LTX2T_FILE_URL_SECRET"):
        create_app(Settings(data_dir=tmp_path, environment="production", webhook_secret="whsec_" + "A" * 32))
    app = create_app(Settings(data_dir=tmp_path, environment="production", webhook_secret="whsec_" + "A" * 32,
                              file_url_secret="x" * 32))
    assert app.title == "ltx2trainer"


def test_settings_come_from_ltx2t_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("LTX2T_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LTX2T_PRICE_PER_STEP", "0.01")
    monkeypatch.setenv("LTX2T_BROKER_URL", "redis://127.0.0.1:6379/3")
    settings = Settings()
    assert settings.data_dir == tmp_path and str(settings.price_per_step) == "0.01"
    assert settings.broker_url == "redis://127.0.0.1:6379/3"
