"""The one settings class. Every field has a working default; override with ITFF_<FIELD>.

Lists take JSON in the environment, e.g. ITFF_SYMBOLS='["BTCUSDT","SOLUSDT"]'.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import re

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from itff_platform.rules import next_month

# Durations the platform understands, in seconds. Binance's interval names.
INTERVAL_SECONDS = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ITFF_", extra="ignore")

    # --- where things live
    home: Path = Field(default_factory=Path.cwd, description="Project root; relative paths hang off it.")
    lake_dir: Path = Path("data_lake")
    mlflow_dir: Path = Path("mlflow")
    drop_dir: Path = Path("data_lake/drop")
    reports_dir: Path = Path("reports")
    monitoring_dir: Path = Field(Path("data_lake/monitoring"), description="Delta tables of the prediction log and decisions.")

    # --- what to ingest
    source: Literal["sample", "files", "binance"] = "sample"
    symbols: list[str] = ["BTCUSDT", "ETHUSDT"]
    interval: str = "1h"
    start_date: date = date(2021, 4, 1)
    # None means "through the current month"; the packaged sample stops at 2024-09.
    end_date: date | None = None
    binance_base_url: str = "https://api.binance.com"
    binance_archive_url: str = "https://data.binance.vision"
    binance_max_retries: int = 6
    http_timeout_s: float = 30.0

    # --- data quality
    gap_tolerance_bars: int = Field(0, ge=0, description="Missing bars in a row tolerated before a gap is reported.")
    continuity_atr_multiple: float = Field(25.0, gt=0, description="A bar whose open or close is more than this many ATRs "
                                           "from the previous close is named by the price_continuity check (a wrong "
                                           "symbol's file). Real BTC/ETH hourly bars peaked at 19 ATRs in 2021-2024.")
    lake_vacuum_retention_hours: int = Field(168, ge=0, description="lake_maintenance deletes Parquet files the lake stopped "
                                             "using (replaced, compacted, or left by a killed write) once they are this "
                                             "old. Also the time travel kept: a training run's logged Delta versions stay "
                                             "readable this long.")
    lake_maintenance_cron: str = Field("45 3 * * *", description="Cron (UTC) of the lake_maintenance schedule: compact "
                                       "small files, vacuum, and check that silver matches bronze.")

    # --- features
    return_lags: list[int] = [1, 3, 6, 12, 24]
    volatility_window: int = 24
    rsi_period: int = 14
    atr_period: int = 14
    adx_period: int = 14
    cci_period: int = 20
    wavetrend_channel: int = 10
    wavetrend_average: int = 21
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bollinger_period: int = 20
    bollinger_width: float = 2.0
    volume_zscore_window: int = 20
    daily_range_days: int = 14
    # Bars of history read before a window so recursive indicators (Wilder, EMA) have converged
    # to float precision: (1 - 1/14) ** 600 < 1e-19.
    warmup_bars: int = 600

    # --- regime rules
    regime_adx_trend: float = 25.0
    regime_adx_range: float = 20.0
    regime_slope_period: int = 50
    regime_volatility_quantile: float = 0.9
    regime_volatility_lookback: int = 720

    # --- labels
    label_horizon: int = Field(4, ge=1, description="Bars ahead for direction, forward return and barrier.")
    label_neutral_zone: float = Field(0.001, ge=0, description="|forward log return| below this is flagged neutral.")
    label_barrier_atr: float = Field(1.0, gt=0, description="k in the +/- k*ATR triple barrier.")

    # --- training
    targets: list[Literal["direction", "level_up", "forward_return"]] = ["direction", "level_up", "forward_return"]
    # Names from the model-family registry (models.registry), checked against it below.
    families: list[str] = ["logistic", "boosting", "lstm", "transformer", "lorentzian"]
    regression_families: list[str] = ["boosting_quantile", "linear_quantile"]
    seed: int = 42
    trials: int = Field(3, ge=1, description="Optuna trials per study (scikit-learn and k-NN families).")
    torch_trials: int = Field(2, ge=1, description="Optuna trials per study for the torch families.")
    study_timeout_s: float = Field(240, gt=0, description="Wall-clock budget per study; trials stop once it is spent.")
    wf_folds: int = Field(4, ge=2)
    wf_test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the rows in each walk-forward test window.")
    wf_mode: Literal["expanding", "sliding"] = "expanding"
    wf_train_bars: int = Field(8760, ge=100, description="Training window length in sliding mode.")
    wf_embargo_bars: int = Field(24, ge=0, description="Bars after each test window never used for training.")
    fees_bps: float = Field(10.0, ge=0, description="Cost per side, in basis points, charged by the backtest.")
    default_threshold: float = Field(0.55, ge=0.5, lt=1, description="Threshold on P(up) before any fold can choose one.")
    min_trades: int = Field(20, ge=1, description="Trades a threshold must make to be chosen.")
    torch_max_train_rows: int = Field(6000, ge=500, description="Most recent rows of a training window the torch families fit on.")
    sequence_length: int = Field(24, ge=2, description="Bars of feature history an LSTM/Transformer sees.")
    torch_epochs: int = Field(3, ge=1)
    torch_device: str = Field("auto", description="auto (cuda when present), cpu or cuda.")
    mc_dropout_samples: int = Field(20, ge=2, description="Stochastic passes whose spread is reported as `uncertainty`.")
    calibration_rows: int = Field(2000, ge=0, description="Most recent rows of each training window held out to calibrate "
                                  "the model on (Platt for probabilities, conformal for bands); 0 turns calibration off.")
    # --- promotion: serve a version only on significant skill; trade its rule only on a significant edge
    promotion_alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the serve decision: a version becomes "
                                   "champion when a one-sided Diebold-Mariano test says its loss beats the better baseline's "
                                   "(and the champion's) on the holdout window with p below this.")
    max_ece: float = Field(0.03, gt=0, description="Walk-forward expected calibration error above which a version is neither "
                           "registered nor promoted.")
    tradable_alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the trade decision: the deployed "
                                  "threshold rule's walk-forward trades must earn more than zero after fees with p below this.")
    tradable_min_trades: int = Field(30, ge=0, description="Walk-forward trades the deployed rule must make to be tradable.")
    tradable_max_drawdown: float = Field(0.35, gt=0, le=1, description="Largest walk-forward drawdown a tradable rule may have.")
    # --- serving (tokens are secrets: set ITFF_API_TOKENS in the environment, never in the repo)
    # SecretStr keeps them out of `itff settings`, reprs and logs; readers call .get_secret_value().
    api_tokens: list[SecretStr] = Field(default_factory=list, description="Accepted X-API-Token values; empty refuses every prediction.")
    admin_token: SecretStr | None = Field(None, description="Token for /admin/reload; unset disables the endpoint.")
    rate_limit_per_minute: int = Field(600, ge=1, description="Requests per minute per token (bucket refill rate).")
    rate_limit_burst: int = Field(60, ge=1, description="Requests a token may make at once before the rate applies.")
    max_request_bytes: int = Field(2_000_000, ge=1024, description="Larger request bodies are refused with 413.")
    tradingview_secret: SecretStr | None = Field(None, description="When set, /tradingview requires X-Signature = "
                                           "HMAC-SHA256(secret, raw body), a recent sent_at, and a signature not seen before.")
    serve_workers: int = Field(2, ge=1, description="BentoML worker processes (one per core). Each enforces 1/N of a token's rate limit.")
    serve_access_log: bool = Field(False, description="BentoML's per-request access log; off because it costs ~25% of throughput.")
    batch_max_size: int = Field(64, ge=2, description="Most /predict rows the adaptive batcher scores in one model call.")
    reload_interval_s: float = Field(30.0, ge=0, description="How often the service checks the champion alias; 0 disables.")
    model_max_age_days: float = Field(30.0, gt=0, description="Days after its last training bar that a model's answers are "
                                      "flagged expired (they are still given).")
    live_quality_window_days: int = Field(30, ge=1, description="Days of realized predictions, before an evaluation's as_of, "
                                          "that live quality per model version is computed over.")
    tradingview_window_s: float = Field(300.0, gt=0, description="With ITFF_TRADINGVIEW_SECRET set, a signed alert's `sent_at` "
                                        "must be within this many seconds of the server's clock; each signature is accepted once.")
    tradingview_stale: Literal["refuse", "flag"] = Field("refuse", description="An alert (without candles) whose bar the lake "
                                                         "does not hold yet: refuse it, or answer from the newest older bar "
                                                         "with stale: true and age_bars.")
    tradingview_max_close_deviation: float = Field(0.01, gt=0, description="An alert's close further than this fraction "
                                                   "from the answering bar's close is refused.")
    auth_failure_burst: int = Field(20, ge=1, description="Failed authentications an address may make before its requests "
                                    "get 429 (split across the workers, like the rate limit).")
    auth_failures_per_minute: int = Field(10, ge=1, description="Rate at which an address's failed-authentication budget refills.")
    prediction_log_write_ahead: bool = Field(True, description="Fsync every answered prediction to a local segment before "
                                             "its 200 (replayed into Delta at the next start), so a crash loses none.")
    serve_state_dir: Path = Field(Path(".bentoml"), description="The service's local state, under ITFF_HOME when relative: "
                                  "<port>/ is each service's BENTOML_HOME (make serve), tradingview-signatures/ the replay cache.")
    # --- daily automation and monitoring
    automation_on: bool = Field(False, description="Schedules and sensors start switched on (else: switch them on in the Dagster UI).")
    daily_run_utc: str = Field("02:15", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM (UTC) the daily refresh starts.")
    daily_trials: int = Field(2, ge=1, description="Optuna trials per family in the daily retrain (the budget).")
    daily_torch_trials: int = Field(1, ge=1, description="Trials for the torch families in the daily retrain.")
    weekly_evaluation_cron: str = Field("0 6 * * 1", description="Cron (UTC) of the weekly evaluation job.")
    service_url: str = Field("http://127.0.0.1:3000", description="The BentoML service the champion sensor tells to reload.")
    prediction_log_flush_rows: int = Field(500, ge=1, description="The prediction log writes to Delta once this many rows wait...")
    prediction_log_flush_s: float = Field(2.0, gt=0, description="...or once the oldest waiting row is this old.")
    drift_recent_days: int = Field(30, ge=1, description="Days of recent data compared with the training window.")
    drift_reference_days: int = Field(365, ge=7, description="Days of the training window (up to the champion's last training bar) drift compares against.")
    drift_psi_warn: float = Field(0.1, gt=0, description="Population stability index at which a feature drift warns.")
    drift_psi_error: float = Field(0.25, gt=0, description="PSI at which drift is an error and retraining is requested.")
    drift_ks_warn: float = Field(0.1, gt=0, le=1, description="Kolmogorov-Smirnov statistic at which a feature drift warns.")
    drift_ks_error: float = Field(0.2, gt=0, le=1)
    drift_features_for_retrain: int = Field(3, ge=1, description="Features drifting at the error level before drift alone "
                                            "requests retraining: one volatility-level feature moving with the market is normal.")
    regime_shift_warn: float = Field(0.1, gt=0, description="PSI of the regime mix (training vs recent) that warns.")
    regime_shift_error: float = Field(0.25, gt=0)
    quality_log_loss_warn: float = Field(0.02, gt=0, description="Live log loss this far above the backtest's warns.")
    quality_log_loss_error: float = Field(0.05, gt=0, description="...and this far above it requests retraining.")
    min_live_outcomes: int = Field(24, ge=1, description="Realized predictions needed before live quality is judged.")
    drift_false_alarm_rate: float = Field(0.01, gt=0, lt=0.5, description="Share of stable windows allowed to reach a "
                                          "drift error: each feature's PSI/KS error threshold (and the regime mix's) is the "
                                          "statistic's (1 - rate) quantile over windows of the reference period, floored by "
                                          "the fixed *_ERROR thresholds.")
    drift_warn_false_alarm_rate: float = Field(0.1, gt=0, lt=0.5, description="The same for the warn thresholds, floored "
                                               "by the fixed *_WARN ones.")
    drift_calibration_step_days: int = Field(3, ge=1, description="Days between the starts of the reference windows whose "
                                             "drift, against the rest of the reference, calibrates the thresholds.")
    drift_cooldown_days: int = Field(30, ge=0, description="A model sent for retraining is not sent again until this many "
                                     "days after that decision (its as-of time); 0 switches the cooldown off.")
    drift_mape_error: float = Field(0.08, gt=0, description="Live forward_return MAPE (a fraction, as live quality reports "
                                    "it) above which that champion is retrained: runbook 001's 8 %.")
    drift_precision_recall_max: float = Field(0.05, gt=0, le=1, description="Live precision or recall of the served long "
                                              "calls this far (absolute) from the backtest's retrains a classification "
                                              "champion, which re-selects its threshold: runbooks 000/002's weekly 5 %.")
    drift_precision_recall_days: int = Field(7, ge=1, description="Days of realized outcomes the precision/recall check reads.")
    drift_precision_recall_alpha: float = Field(0.05, gt=0, le=1, description="A precision/recall gap past the maximum "
                                                "retrains only if a binomial test against the backtest's rate also gives p "
                                                "below this: a week's few dozen calls carry a standard error above 5 points. "
                                                "1 judges the gap alone.")
    progress_bar: bool = Field(False, description="Optuna's progress bar per study (the CLI turns it on).")
    mlflow_tracking_uri: str | None = None
    mlflow_ui_url: str = Field("http://127.0.0.1:5000", description="Where `make dev` serves the MLflow UI; used in links.")
    optuna_storage: str | None = None

    @field_validator("symbols")
    @classmethod
    def _symbols_upper(cls, symbols: list[str]) -> list[str]:
        if not symbols:
            raise ValueError("symbols: at least one symbol is required")
        return [s.strip().upper() for s in symbols]

    @field_validator("interval")
    @classmethod
    def _known_interval(cls, interval: str) -> str:
        if interval not in INTERVAL_SECONDS:
            raise ValueError(f"interval: {interval!r} is not one of {sorted(INTERVAL_SECONDS)}")
        return interval

    @field_validator("families", "regression_families")
    @classmethod
    def _registered_families(cls, chosen: list[str], info) -> list[str]:
        from itff_platform.models.registry import check_families

        task = "regression" if info.field_name == "regression_families" else "classification"
        return check_families(chosen, task, info.field_name)

    @model_validator(mode="after")
    def _anchor_paths(self) -> "Settings":
        for name in ("lake_dir", "mlflow_dir", "drop_dir", "reports_dir", "monitoring_dir"):
            path = getattr(self, name)
            if not path.is_absolute():
                setattr(self, name, self.home / path)
        return self

    def for_display(self) -> dict[str, Any]:
        """The settings as JSON-ready values with every secret hidden: tokens masked, passwords in URIs redacted."""
        shown = self.model_dump(mode="json")  # SecretStr dumps as "**********"
        for name in ("mlflow_tracking_uri", "optuna_storage", "service_url", "mlflow_ui_url", "binance_base_url",
                     "binance_archive_url"):
            if shown.get(name):
                shown[name] = redact_uri(shown[name])
        return shown

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return (self.mlflow_dir / "artifacts").as_uri()

    @property
    def study_storage(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.mlflow_dir / 'optuna.db'}"

    @property
    def interval_seconds(self) -> int:
        return INTERVAL_SECONDS[self.interval]

    @property
    def bars_per_day(self) -> int:
        return max(1, 86400 // self.interval_seconds)

    def effective_end_date(self) -> date:
        """First day of the month after the last partition."""
        if self.end_date is not None:
            return self.end_date
        if self.source == "sample":
            return date(2024, 10, 1)
        return next_month(date.today())


_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)")


def redact_uri(uri: str) -> str:
    """`postgresql://user:pass@host/db` -> `postgresql://user:***@host/db`, and a bare token as user
    (`https://token@host`) -> `https://***@host`: a URI safe to print or log."""

    def hide(match: re.Match[str]) -> str:
        authority = match["authority"]
        if "@" not in authority:
            return match[0]
        userinfo, host = authority.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        return f"{match['scheme']}{user + ':***' if has_password else '***'}@{host}"

    return _AUTHORITY.sub(hide, uri)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
