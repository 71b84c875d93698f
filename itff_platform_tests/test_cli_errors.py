"""The CLI as a newcomer meets it: secrets never printed, errors in one line that name the setting and the fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def itff(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m itff_platform.cli` on this checkout, as the `itff` script runs it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ITFF_") and k != "DAGSTER_HOME"}
    full = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "itff_platform.cli", *args], cwd=cwd or ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


SECRETS = {
    "ITFF_API_TOKENS": json.dumps(["tok-alpha-1234567", "tok-beta-7654321"]),
    "ITFF_ADMIN_TOKEN": "adm-secret-99887766",
    "ITFF_TRADINGVIEW_SECRET": "tv-hmac-secret-55443322",
    "ITFF_MLFLOW_TRACKING_URI": "postgresql://mlflow:pg-password-1122@db.internal:5432/mlflow",
    "ITFF_OPTUNA_STORAGE": "mysql+pymysql://optuna:my-password-3344@db.internal/optuna",
}


def test_itff_settings_hides_tokens_and_passwords_in_uris(tmp_path):
    result = itff("settings", env={"ITFF_HOME": str(tmp_path), **SECRETS}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = result.stdout + result.stderr
    for secret in ("tok-alpha-1234567", "tok-beta-7654321", "adm-secret-99887766", "tv-hmac-secret-55443322",
                   "pg-password-1122", "my-password-3344"):
        assert secret not in printed
    shown = json.loads(result.stdout)
    assert shown["api_tokens"] == ["**********", "**********"]  # two tokens are configured, both hidden
    assert shown["admin_token"] == "**********" and shown["tradingview_secret"] == "**********"
    assert shown["mlflow_tracking_uri"] == "postgresql://mlflow:***@db.internal:5432/mlflow"  # still says where
    assert shown["optuna_storage"] == "mysql+pymysql://optuna:***@db.internal/optuna"


def test_secret_settings_still_read_from_the_itff_environment(monkeypatch, tmp_path):
    from itff_platform.settings import Settings, redact_uri

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(home=tmp_path)
    assert [t.get_secret_value() for t in settings.api_tokens] == ["tok-alpha-1234567", "tok-beta-7654321"]
    assert settings.admin_token.get_secret_value() == "adm-secret-99887766"
    assert settings.tradingview_secret.get_secret_value() == "tv-hmac-secret-55443322"
    assert settings.tracking_uri == SECRETS["ITFF_MLFLOW_TRACKING_URI"]  # the real URI still reaches MLflow
    assert "adm-secret" not in repr(settings)
    assert redact_uri("https://ghp_token@host/x") == "https://***@host/x"
    assert redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
