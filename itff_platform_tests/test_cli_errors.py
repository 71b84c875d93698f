"""The CLI as a newcomer meets it: secrets never printed, errors in one line that name the setting and the fix."""

import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def itff(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python -m itff_platform.cli` on this checkout, as the `itff` script runs it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ITFF_") and k != "DAGSTER_HOME"}
    full = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "itff_platform.cli", *args],
        cwd=cwd or ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    for secret in (
        "tok-alpha-1234567",
        "tok-beta-7654321",
        "adm-secret-99887766",
        "tv-hmac-secret-55443322",
        "pg-password-1122",
        "my-password-3344",
    ):
        assert secret not in printed
    shown = json.loads(result.stdout)
    serving, tracking = shown["serving"], shown["tracking"]  # printed by section, as the settings are read
    assert serving["api_tokens"] == ["**********", "**********"]  # two tokens are configured, both hidden
    assert serving["admin_token"] == "**********" and serving["tradingview_secret"] == "**********"
    assert tracking["mlflow_tracking_uri"] == "postgresql://mlflow:***@db.internal:5432/mlflow"  # still says where
    assert tracking["optuna_storage"] == "mysql+pymysql://optuna:***@db.internal/optuna"


def test_secret_settings_still_read_from_the_itff_environment(monkeypatch, tmp_path):
    from itff_platform.settings import Settings, redact_uri

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(home=tmp_path)
    assert [t.get_secret_value() for t in settings.serving.api_tokens] == ["tok-alpha-1234567", "tok-beta-7654321"]
    assert settings.serving.admin_token.get_secret_value() == "adm-secret-99887766"
    assert settings.serving.tradingview_secret.get_secret_value() == "tv-hmac-secret-55443322"
    assert settings.tracking_uri == SECRETS["ITFF_MLFLOW_TRACKING_URI"]  # the real URI still reaches MLflow
    assert "adm-secret" not in repr(settings)
    assert redact_uri("https://ghp_token@host/x") == "https://***@host/x"
    assert redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_bad_setting_is_one_line_naming_it_and_the_fix_and_verbose_shows_the_trace(tmp_path):
    env = {"ITFF_HOME": str(tmp_path), "ITFF_START_DATE": "2021-13-01"}
    line = one_line_error(itff("settings", env=env, cwd=tmp_path))
    assert line.startswith("itff settings: ITFF_START_DATE='2021-13-01' is invalid") and "YYYY-MM-DD" in line
    assert "unset it for the default 2021-04-01" in line
    # Validated up front, whatever the command.
    assert "ITFF_START_DATE" in one_line_error(itff("train", env=env, cwd=tmp_path))
    # A secret's value is never echoed, even when invalid.
    secret = one_line_error(
        itff("settings", env={"ITFF_HOME": str(tmp_path), "ITFF_API_TOKENS": '"tok-not-a-list-9911"'}, cwd=tmp_path)
    )
    assert "ITFF_API_TOKENS" in secret and "tok-not-a-list-9911" not in secret
    verbose = itff("--verbose", "settings", env=env, cwd=tmp_path)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "ValidationError" in verbose.stderr


def test_a_typo_in_a_symbol_is_one_line_listing_what_exists(tmp_path):
    env = {"ITFF_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path), "ITFF_SYMBOLS": '["BTCUSDX"]'}
    line = one_line_error(itff("run", env=env, cwd=tmp_path))
    assert "ITFF_SYMBOLS" in line and "BTCUSDT, ETHUSDT" in line and "BTCUSDX" in line
    assert not (tmp_path / "data_lake").exists()  # refused before any run started
    sample = one_line_error(itff("sample-request", "BTCUSDX", env={"ITFF_HOME": str(tmp_path)}, cwd=tmp_path))
    assert "BTCUSDX" in sample and "BTCUSDT" in sample


def test_rollback_of_an_unknown_model_names_it_and_lists_the_registered_ones(tmp_path):
    from mlflow import MlflowClient

    (tmp_path / "mlflow").mkdir()
    env = {"ITFF_HOME": str(tmp_path)}
    # No registry yet: say so, and what to run.
    assert "run `itff train`" in one_line_error(itff("rollback", "BTCUSDT", "direction", env=env, cwd=tmp_path))
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}").create_registered_model("itff-BTCUSDT-direction")
    line = one_line_error(itff("rollback", "BTCUSDX", "direction", env=env, cwd=tmp_path))
    assert "itff-BTCUSDX-direction is not a registered model" in line
    assert "Registered: itff-BTCUSDT-direction" in line and "ITFF_SYMBOLS): BTCUSDT, ETHUSDT" in line


def test_binance_without_dns_fails_fast_naming_the_alternatives(tmp_path):
    import time
    from datetime import datetime

    from itff_platform.market.binance import BinanceCandleSource, BinanceError

    env = {
        "ITFF_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path),
        "ITFF_SOURCE": "binance",
        "ITFF_BINANCE_BASE_URL": "https://nonexistent.invalid",
    }
    started = time.monotonic()
    line = one_line_error(itff("run", env=env, cwd=tmp_path))
    assert time.monotonic() - started < 30
    assert "cannot resolve nonexistent.invalid (ITFF_BINANCE_BASE_URL)" in line
    assert "ITFF_SOURCE=sample" in line and "ITFF_SOURCE=files" in line

    # The source itself does not retry a name that does not resolve (it used to back off for 68 s).
    waits: list[float] = []
    source = BinanceCandleSource("https://nonexistent.invalid", "https://nonexistent.invalid", sleep=waits.append)
    try:
        source.fetch("BTCUSDT", "1h", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    except BinanceError as error:
        assert "cannot resolve" in str(error) and "ITFF_SOURCE=sample" in str(error)
    else:
        raise AssertionError("expected a BinanceError")
    assert waits == [] and source.requests_made == 1


def test_make_help_lists_every_target_with_its_description():
    result = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:")).split()[
        1:
    ]
    described = {line.split(":")[0] for line in result.stdout.splitlines() if not line.startswith(" ")}
    assert set(phony) <= described, set(phony) - described
    assert "run: install, materialize raw -> bronze -> silver" in result.stdout and "##" not in result.stdout


def test_every_subcommand_has_a_description():
    from itff_platform.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert set(commands.choices) >= {"run", "train", "promote", "rollback", "sample-request", "replay", "settings"}
    for name, sub in commands.choices.items():
        assert sub.description and len(sub.description) > 20, name
    listing = itff("--help").stdout
    for action in commands._choices_actions:
        assert action.help and action.dest in listing


def test_sample_request_takes_the_target_positionally_or_as_an_option_and_refuses_a_bad_one(tmp_path):
    env = {"ITFF_HOME": str(tmp_path)}
    for args in (["ETHUSDT", "level_up"], ["ETHUSDT", "--target", "level_up"]):
        result = itff("sample-request", *args, "--bars", "3", env=env, cwd=tmp_path)
        body = json.loads(result.stdout)
        assert (body["symbol"], body["target"], len(body["candles"])) == ("ETHUSDT", "level_up", 3)
    assert json.loads(itff("sample-request", "ethusdt", "--bars", "1", env=env).stdout)["target"] == "direction"
    line = one_line_error(itff("sample-request", "ETHUSDT", "levelup", env=env, cwd=tmp_path))
    assert line == "itff sample-request: TARGET 'levelup' is not one of direction, level_up, forward_return"


def test_the_docs_state_the_regime_warm_up_the_code_has_and_no_build_machine_paths():
    from datetime import datetime

    import polars as pl

    from itff_platform.features.silver import build_features
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform.settings import Settings

    candles = SampleCandleSource().fetch(
        "BTCUSDT", "1h", datetime(2021, 5, 1, tzinfo=UTC), datetime(2021, 7, 1, tzinfo=UTC)
    )
    regimes = build_features(candles, Settings()).collect().with_row_index().filter(pl.col("regime") != "unknown")
    warm_up = regimes["index"][0] + 1  # bars needed before the first known regime
    assert warm_up == 744
    serving = (ROOT / "docs" / "serving.md").read_text()  # the README's serving section moved there
    assert f"It stays `unknown` below {warm_up} bars" in serving and "745 bars" not in serving
    assert f"{warm_up}-bar warm-up" in itff("sample-request", "--help").stdout
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert "/work/" not in text and "/home/" not in text, page.name


def test_without_dagster_home_runs_land_in_the_project_instance_or_are_refused(tmp_path, monkeypatch):
    from dagster import DagsterInstance

    # No dagster.yaml under ITFF_HOME and no DAGSTER_HOME: refused in one line, before anything is written.
    bare = tmp_path / "bare"
    bare.mkdir()
    line = one_line_error(itff("run", "--lake-only", env={"ITFF_HOME": str(bare)}, cwd=bare))
    assert "DAGSTER_HOME is not set" in line and "dagster.yaml" in line and "ITFF_HOME" in line
    assert not (bare / "data_lake").exists()

    # The project's dagster.yaml under ITFF_HOME: the run is recorded in that instance, where the UI looks.
    project = tmp_path / "project"
    project.mkdir()
    (project / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {"ITFF_HOME": str(project), "ITFF_SYMBOLS": '["BTCUSDT"]', "ITFF_END_DATE": "2021-06-01"}
    result = itff("run", "--lake-only", env=env, cwd=tmp_path, timeout=300)  # cwd elsewhere: ITFF_HOME decides
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.chdir(project)  # dagster.yaml's storage folders are relative to the working directory, as in `make dev`
    with DagsterInstance.from_config(str(project)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].is_success


def register_versions(tmp_path: Path, name: str, count: int) -> str:
    """A real MLflow SQLite registry under ITFF_HOME holding `count` versions of a trivial pyfunc model."""
    import mlflow.pyfunc

    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    (tmp_path / "mlflow").mkdir(exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(name, artifact_location=(tmp_path / "mlflow" / "artifacts").as_uri())
    for _ in range(count):
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=Constant(), registered_model_name=name)
    return uri


def test_promote_without_a_champion_says_what_to_do_and_force_serves_a_version_recorded_as_forced(
    tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # mlflow writes an mlruns/ folder in the working directory otherwise
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    uri = register_versions(tmp_path, "itff-BTCUSDT-direction", 2)
    env = {"ITFF_HOME": str(tmp_path)}

    # v2 carries no holdout metrics, so nothing can be promoted: the reason, then the remedy with the flags to use.
    result = itff("promote", "--symbol", "btcusdt", "--target", "direction", env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "itff-BTCUSDT-direction" in result.stdout and "no champion" in result.stdout
    assert "itff-ETHUSDT" not in result.stdout  # --symbol/--target chose one model
    assert (
        "what to do: to get one: raise ITFF_TRIALS and retrain (itff train --symbol BTCUSDT --target direction "
        "--trials 20), or serve a version that did not pass anyway: itff promote --symbol BTCUSDT --target "
        "direction --force"
    ) in result.stdout

    # --force needs the model named, and an existing version.
    assert "--force VERSION needs --symbol and --target" in one_line_error(
        itff("promote", "--force", "1", env=env, cwd=tmp_path)
    )
    missing = one_line_error(
        itff("promote", "--symbol", "BTCUSDT", "--target", "direction", "--force", "7", env=env, cwd=tmp_path)
    )
    assert "itff-BTCUSDT-direction has no version 7; its versions: 1, 2" in missing

    forced = itff("promote", "--symbol", "BTCUSDT", "--target", "direction", "--force", "1", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "champion forced to v1 (was none), manifest written, recorded as forced" in forced.stdout
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("itff-BTCUSDT-direction", "champion")
    assert str(version.version) == "1"
    assert (
        version.tags["promotion_decision"] == "forced"
        and "forced by itff promote --force" in version.tags["promotion_reasons"]
    )
    assert version.tags["manifest_sha256"]  # written by the same _set_champion a promotion uses
    run_files = [f.path for f in client.list_artifacts(version.run_id, "integrity")]
    assert run_files == ["integrity/manifest-v1.json"]

    # Forcing v2 over it keeps the history, so rollback goes back to v1.
    assert (
        itff(
            "promote", "--symbol", "BTCUSDT", "--target", "direction", "--force", "2", env=env, cwd=tmp_path
        ).returncode
        == 0
    )
    back = itff("rollback", "BTCUSDT", "direction", env=env, cwd=tmp_path)
    assert back.returncode == 0 and "from v2 back to v1" in back.stdout, back.stderr


def test_train_and_promote_refuse_an_unconfigured_symbol_or_a_bad_trial_count(tmp_path):
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {"ITFF_HOME": str(tmp_path)}
    line = one_line_error(itff("train", "--symbol", "SOLUSDT", env=env, cwd=tmp_path))
    assert line == "itff train: --symbol SOLUSDT: not among the configured symbols (ITFF_SYMBOLS): BTCUSDT, ETHUSDT"
    bad = itff("train", "--trials", "0", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "'0' is not a whole number of at least 1" in bad.stderr
    both = one_line_error(
        itff(
            "promote",
            "--symbol",
            "BTCUSDT",
            "--target",
            "direction",
            "--trials",
            "3",
            "--force",
            "1",
            env=env,
            cwd=tmp_path,
        )
    )
    assert "give one of them" in both


def test_lake_maintenance_never_reports_negative_bytes_reclaimed():
    """After a fresh `itff run` maintenance added 185,920 bytes (checkpoints, compaction) and the CLI printed
    "-185920 bytes reclaimed"."""
    from itff_platform.cli import maintenance_outcome

    grew = maintenance_outcome({"bytes_reclaimed": -185920, "files_vacuumed": 0, "retention_hours": 168})
    assert "-" not in grew.split(":")[0] and "185,920 bytes" in grew and "168 h" in grew and "reclaimed yet" in grew
    assert (
        maintenance_outcome({"bytes_reclaimed": 4096, "files_vacuumed": 3})
        == "4,096 bytes reclaimed, 3 superseded file(s) vacuumed"
    )
