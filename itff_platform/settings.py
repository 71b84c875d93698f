"""The settings: one pydantic-settings class of nested sections (lake, sources, features, training, trading,
promotion, serving, monitoring, automation, tracking). Every field has a working default.

Each field is set from the environment by its flat name, ITFF_<NAME> (ITFF_TRIALS, ITFF_LAKE_DIR), or by its path,
ITFF_<SECTION>__<FIELD> (ITFF_TRAINING__TRIALS, ITFF_LAKE__ROOT); the path wins when both are set. Lists take JSON,
e.g. ITFF_SYMBOLS='["BTCUSDT","SOLUSDT"]'. Code reads the path (settings.training.trials); Settings(trials=3) and
settings.model_copy(update={"trials": 3}) also take flat names. docs/configuration.md lists every field and is
generated from this module (make docs).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from itff_platform.rules import next_month

ENV_PREFIX = "ITFF_"
NESTED_DELIMITER = "__"

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


def flat(name: str, flat_name: str) -> AliasChoices:
    """A field whose flat name (ITFF_<FLAT_NAME>, Settings(<flat_name>=...)) predates its section: lake.root was
    lake_dir. The flat name is the last choice; the section's own name stays first, so the path form still works."""
    return AliasChoices(name, flat_name)


class Section(BaseModel):
    # Unknown names are ignored, as at the top level: the environment holds ITFF_ variables that are not settings.
    model_config = ConfigDict(extra="ignore")


class LakeSettings(Section):
    """The Delta lake: where it lives, the data-quality rules bronze applies, and its upkeep."""

    root: Path = Field(
        Path("data_lake"),
        validation_alias=flat("root", "lake_dir"),
        description="The lake's folder (raw, bronze, silver, quarantine), under home when relative.",
    )
    gap_tolerance_bars: int = Field(0, ge=0, description="Missing bars in a row tolerated before a gap is reported.")
    continuity_atr_multiple: float = Field(
        25.0,
        gt=0,
        description="A bar whose open or close is more than this many ATRs "
        "from the previous close is named by the price_continuity check (a wrong "
        "symbol's file). Real BTC/ETH hourly bars peaked at 19 ATRs in 2021-2024.",
    )
    vacuum_retention_hours: int = Field(
        168,
        ge=0,
        validation_alias=flat("vacuum_retention_hours", "lake_vacuum_retention_hours"),
        description="lake_maintenance deletes Parquet files the lake stopped "
        "using (replaced, compacted, or left by a killed write) once they are this "
        "old. Also the time travel kept: a training run's logged Delta versions stay "
        "readable this long.",
    )
    maintenance_cron: str = Field(
        "45 3 * * *",
        validation_alias=flat("maintenance_cron", "lake_maintenance_cron"),
        description="Cron (UTC) of the lake_maintenance schedule: compact small files, vacuum, "
        "and check that silver matches bronze.",
    )


class SampleSourceSettings(Section):
    """The packaged sample (market/sample_data)."""

    end_date: date = Field(
        date(2024, 10, 1),
        validation_alias=flat("end_date", "sample_end_date"),
        description="First day after the packaged sample's last month (it holds 2021-04 .. 2024-09): "
        "the end of the partitions when ITFF_END_DATE is unset. A test checks it against the data.",
    )


class FilesSourceSettings(Section):
    """A vendor's candle files dropped in a folder."""

    drop_dir: Path = Field(
        Path("data_lake/drop"),
        description="Folder the files source reads and the drop sensor watches, under home when relative.",
    )


class BinanceSourceSettings(Section):
    """Binance's public REST API and its monthly archives."""

    base_url: str = Field(
        "https://api.binance.com",
        validation_alias=flat("base_url", "binance_base_url"),
        description="Binance REST API.",
    )
    archive_url: str = Field(
        "https://data.binance.vision",
        validation_alias=flat("archive_url", "binance_archive_url"),
        description="Binance's monthly candle archives.",
    )
    max_retries: int = Field(
        6,
        validation_alias=flat("max_retries", "binance_max_retries"),
        description="Retries (with backoff) of a failed or rate-limited Binance request.",
    )
    http_timeout_s: float = Field(30.0, description="Timeout of one HTTP request to Binance, in seconds.")


class SourcesSettings(Section):
    """What each candle source needs (the source in use is ITFF_SOURCE)."""

    sample: SampleSourceSettings = Field(default_factory=SampleSourceSettings, description="The packaged sample.")
    files: FilesSourceSettings = Field(default_factory=FilesSourceSettings, description="Files in a drop folder.")
    binance: BinanceSourceSettings = Field(default_factory=BinanceSourceSettings, description="Binance.")


class FeatureSettings(Section):
    """How silver is computed: indicators, regime rules and labels. Every field is part of silver's fingerprint."""

    return_lags: list[int] = Field([1, 3, 6, 12, 24], description="Bars of each log-return feature.")
    volatility_window: int = Field(24, description="Bars of the rolling volatility.")
    rsi_period: int = Field(14, description="RSI period (Wilder).")
    atr_period: int = Field(14, description="ATR period (Wilder); also the unit of the label barrier.")
    adx_period: int = Field(14, description="ADX period (Wilder).")
    cci_period: int = Field(20, description="CCI period.")
    wavetrend_channel: int = Field(10, description="WaveTrend channel length.")
    wavetrend_average: int = Field(21, description="WaveTrend average length.")
    macd_fast: int = Field(12, description="MACD fast EMA.")
    macd_slow: int = Field(26, description="MACD slow EMA.")
    macd_signal: int = Field(9, description="MACD signal EMA.")
    bollinger_period: int = Field(20, description="Bollinger band period.")
    bollinger_width: float = Field(2.0, description="Bollinger band width, in standard deviations.")
    volume_zscore_window: int = Field(20, description="Bars of the volume z-score.")
    daily_range_days: int = Field(14, description="Days of the daily-range feature.")
    # (1 - 1/14) ** 600 < 1e-19
    warmup_bars: int = Field(
        600,
        description="Bars of history read before a window so recursive indicators (Wilder, "
        "EMA) have converged to float precision.",
    )
    regime_adx_trend: float = Field(25.0, description="ADX at or above which a bar trends.")
    regime_adx_range: float = Field(20.0, description="ADX below which a bar ranges.")
    regime_slope_period: int = Field(
        50, description="Bars of the moving average whose slope gives a trend's direction."
    )
    regime_volatility_quantile: float = Field(
        0.9, description="Volatility quantile above which a bar is high-volatility."
    )
    regime_volatility_lookback: int = Field(720, description="Bars over which that quantile is taken.")
    label_horizon: int = Field(4, ge=1, description="Bars ahead for direction, forward return and barrier.")
    label_neutral_zone: float = Field(0.001, ge=0, description="|forward log return| below this is flagged neutral.")
    label_barrier_atr: float = Field(1.0, gt=0, description="k in the +/- k*ATR triple barrier.")


class TrainingSettings(Section):
    """What is trained and how: targets, families, the Optuna budget, walk-forward folds, the torch families."""

    targets: list[Literal["direction", "level_up", "forward_return"]] = Field(
        ["direction", "level_up", "forward_return"], description="Targets trained per symbol."
    )
    # Names from the model-family registry (models.registry), checked against it below.
    families: list[str] = Field(
        ["logistic", "boosting", "lstm", "transformer", "lorentzian"],
        description="Model families of the classification targets (registered classifiers).",
    )
    regression_families: list[str] = Field(
        ["boosting_quantile", "linear_quantile"],
        description="Model families of forward_return (registered regressors).",
    )
    seed: int = Field(42, description="Seed of the samplers and the models.")
    trials: int = Field(3, ge=1, description="Optuna trials per study (scikit-learn and k-NN families).")
    torch_trials: int = Field(2, ge=1, description="Optuna trials per study for the torch families.")
    study_timeout_s: float = Field(240, gt=0, description="Wall-clock budget per study; trials stop once it is spent.")
    pruner: Literal["fold_mean", "median", "none"] = Field(
        "fold_mean",
        description="How a trial is stopped early: fold_mean stops it after a walk-forward fold when its loss on "
        "the folds it has run is significantly above the best completed trial's on the same rows (a one-sided "
        "paired test at pruner_alpha); median is Optuna's MedianPruner as before (only the third trial could be "
        "pruned); none.",
    )
    pruner_startup_trials: int = Field(
        1, ge=1, description="Trials that complete before fold_mean may prune (it compares with them)."
    )
    pruner_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Significance level of fold_mean: a trial stops only when the one-sided Diebold-Mariano test "
        "of its per-row losses against the leading completed trial's, on the same folds, gives a p-value below it. "
        "Lower prunes less and more safely.",
    )
    study_jobs: int = Field(
        1,
        ge=1,
        description="Optuna trials run at once in a study (threads). Above 1 the trials' order, and so the "
        "sampler's choices, depend on timing: the search is no longer reproducible from the seed.",
    )
    study_workers: int = Field(
        1,
        ge=1,
        description="Processes that run a study's trials (docs/scale-out-optuna.md): 1 runs them in the training "
        "process; N starts N-1 worker processes that join the study through its Optuna storage (heartbeats, a "
        "dead worker's trial retried), and `itff study-worker` joins it from any machine. Each process runs "
        "study_jobs trials at once. As with study_jobs above 1, the search is not reproducible from the seed.",
    )
    study_heartbeat_s: int = Field(
        10,
        ge=1,
        description="With study_workers above 1: how often a running trial tells the storage it is alive; a trial "
        "silent for 3 heartbeats (its worker died) is marked failed and retried, twice at most.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Threads each trial's torch (and OpenMP) work uses, BLAS keeping one; 0: the cores this "
        "process may run on divided among the trials run at once (study_jobs x study_workers) and the training runs "
        "Dagster may run at once.",
    )
    wf_folds: int = Field(4, ge=2, description="Walk-forward folds.")
    wf_test_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of the rows in each walk-forward test window."
    )
    wf_mode: Literal["expanding", "sliding"] = Field(
        "expanding", description="Walk-forward training windows: expanding from the start, or sliding of wf_train_bars."
    )
    wf_train_bars: int = Field(8760, ge=100, description="Training window length in sliding mode.")
    wf_embargo_bars: int = Field(24, ge=0, description="Bars after each test window never used for training.")
    torch_max_train_rows: int = Field(
        6000, ge=500, description="Most recent rows of a training window the torch families fit on."
    )
    sequence_length: int = Field(24, ge=2, description="Bars of feature history an LSTM/Transformer sees.")
    torch_epochs: int = Field(3, ge=1, description="Epochs the torch families train.")
    torch_device: str = Field("auto", description="auto (cuda when present), cpu or cuda.")
    mc_dropout_samples: int = Field(
        20, ge=2, description="Stochastic passes whose spread is reported as `uncertainty`."
    )
    calibration_rows: int = Field(
        2000,
        ge=0,
        description="Most recent rows of each training window held out to calibrate "
        "the model on (Platt for probabilities, conformal for bands); 0 turns calibration off.",
    )
    progress_bar: bool = Field(False, description="Optuna's progress bar per study (the CLI turns it on).")

    @field_validator("families", "regression_families")
    @classmethod
    def _registered_families(cls, chosen: list[str], info: ValidationInfo) -> list[str]:
        from itff_platform.models.registry import Task, check_families

        task: Task = "regression" if info.field_name == "regression_families" else "classification"
        return check_families(chosen, task, str(info.field_name))


class TradingSettings(Section):
    """The threshold rule a classifier's P(up) is traded by, its backtest costs, when it counts as tradable, and
    the paper-trading account's risk limits (docs/trading.md)."""

    fees_bps: float = Field(10.0, ge=0, description="Cost per side, in basis points, charged by the backtest.")
    default_threshold: float = Field(
        0.55, ge=0.5, lt=1, description="Threshold on P(up) before any fold can choose one."
    )
    min_trades: int = Field(20, ge=1, description="Trades a threshold must make to be chosen.")
    tradable_alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Significance level of the trade decision: the deployed "
        "threshold rule's walk-forward trades must earn more than zero after fees with p below this.",
    )
    tradable_min_trades: int = Field(
        30, ge=0, description="Walk-forward trades the deployed rule must make to be tradable."
    )
    tradable_max_drawdown: float = Field(
        0.35, gt=0, le=1, description="Largest walk-forward drawdown a tradable rule may have."
    )
    # Paper trading (runbook 004): the gates and sizing of POST /trade/execute, and the paper account.
    confidence_threshold: float = Field(
        0.6,
        ge=0.5,
        le=1,
        description="Confidence (max(P(long), P(short))) below which /consensus answers allow false and "
        "/trade/execute answers 412.",
    )
    max_drawdown_pct: float = Field(
        10.0,
        gt=0,
        le=100,
        description="Drawdown of the paper account (in %, from its peak equity since the last risk reset) beyond "
        "which orders get 423 until an admin POST /risk/reset.",
    )
    per_symbol_usd_cap: float = Field(
        2000.0, gt=0, description="Largest exposure (USD, marked to market) per symbol; larger orders are clipped."
    )
    target_ann_vol: float = Field(
        0.08,
        gt=0,
        description="Target annualised volatility of a position: an order is scaled by min(1, target / the lake's "
        "realized annualised volatility of the symbol), and by its confidence.",
    )
    slippage_bps: float = Field(
        5.0, ge=0, description="Paper fills' slippage, in basis points, against the order (on top of fees_bps)."
    )
    paper_cash: float = Field(10_000.0, gt=0, description="Starting cash of the paper account, in USD.")
    trading_mode: Literal["paper", "live"] = Field(
        "paper",
        description="Where orders go by default: paper (the ledger). live is refused: no broker adapter ships.",
    )
    accept_request_price: bool = Field(
        False,
        description="Let an order carry its own fill price (tests, replays); else it fills at the lake's next open.",
    )
    ledger_dir: Path | None = Field(
        None,
        description="Folder of the paper account's ledger and the autopilot's decision log, under home when "
        "relative; unset: <lake root>/trading. `itff replay --trade` gives its service a folder of its own.",
    )
    autopilot_order_usd: float = Field(
        500.0,
        gt=0,
        description="USD the autopilot asks for on each allowed consensus signal; the desk scales it by the "
        "confidence and the volatility target, and clips it at the per-symbol cap.",
    )


class PromotionSettings(Section):
    """When a version is served: only on significant skill."""

    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        validation_alias=flat("alpha", "promotion_alpha"),
        description="Significance level of the serve decision: a version becomes "
        "champion when a one-sided Diebold-Mariano test says its loss beats the better baseline's "
        "(and the champion's) on the holdout window with p below this.",
    )
    max_ece: float = Field(
        0.03,
        gt=0,
        description="Walk-forward expected calibration error above which a version is neither registered nor promoted.",
    )


class ServingSettings(Section):
    """The BentoML service: auth, limits, workers, reloads, TradingView alerts and the prediction log it writes.

    Tokens are secrets: set ITFF_API_TOKENS in the environment, never in the repo. SecretStr keeps them out of
    `itff settings`, reprs and logs; readers call .get_secret_value()."""

    api_tokens: list[SecretStr] = Field(
        default_factory=list, description="Accepted X-API-Token values; empty refuses every prediction."
    )
    admin_token: SecretStr | None = Field(
        None, description="Token for /admin/reload and POST /risk/reset; unset disables them."
    )
    rate_limit_per_minute: int = Field(600, ge=1, description="Requests per minute per token (bucket refill rate).")
    rate_limit_burst: int = Field(60, ge=1, description="Requests a token may make at once before the rate applies.")
    max_request_bytes: int = Field(2_000_000, ge=1024, description="Larger request bodies are refused with 413.")
    tradingview_secret: SecretStr | None = Field(
        None,
        description="When set, /tradingview requires X-Signature = "
        "HMAC-SHA256(secret, raw body), a recent sent_at, and a signature not seen before.",
    )
    workers: int = Field(
        2,
        ge=1,
        validation_alias=flat("workers", "serve_workers"),
        description="BentoML worker processes (one per core). Each enforces 1/N of a token's rate limit.",
    )
    access_log: bool = Field(
        False,
        validation_alias=flat("access_log", "serve_access_log"),
        description="BentoML's per-request access log; off because it costs ~25% of throughput.",
    )
    trace_predictions: bool = Field(
        False,
        description="OpenTelemetry spans (BentoML's tracing) for /predict and /predict_batch. Off by default: "
        "BentoML exports no traces until `tracing.exporter_type` is configured, yet the spans cost ~20% of a "
        "worker's time per feature row. Turn on with an exporter. Every other path is traced either way.",
    )
    batch_max_size: int = Field(
        64, ge=2, description="Most /predict rows the adaptive batcher scores in one model call."
    )
    reload_interval_s: float = Field(
        30.0, ge=0, description="How often the service checks the champion alias; 0 disables."
    )
    model_max_age_days: float = Field(
        30.0,
        gt=0,
        description="Days after its last training bar that a model's answers are "
        "flagged expired (they are still given).",
    )
    tradingview_window_s: float = Field(
        300.0,
        gt=0,
        description="With ITFF_TRADINGVIEW_SECRET set, a signed alert's `sent_at` "
        "must be within this many seconds of the server's clock; each signature is accepted once.",
    )
    tradingview_stale: Literal["refuse", "flag"] = Field(
        "refuse",
        description="An alert (without candles) whose bar the lake "
        "does not hold yet: refuse it, or answer from the newest older bar "
        "with stale: true and age_bars.",
    )
    tradingview_max_close_deviation: float = Field(
        0.01, gt=0, description="An alert's close further than this fraction from the answering bar's close is refused."
    )
    auth_failure_burst: int = Field(
        20,
        ge=1,
        description="Failed authentications an address may make before its requests "
        "get 429 (split across the workers, like the rate limit).",
    )
    auth_failures_per_minute: int = Field(
        10, ge=1, description="Rate at which an address's failed-authentication budget refills."
    )
    prediction_log_write_ahead: bool = Field(
        True,
        description="Fsync every answered prediction to a local segment before "
        "its 200 (replayed into Delta at the next start), so a crash loses none.",
    )
    prediction_log_flush_rows: int = Field(
        5000,
        ge=1,
        description="The prediction log writes to Delta once this many rows wait... Each commit costs 25-220 ms "
        "of the worker's CPU, more as the table grows (`make bench-serve`): at 500 rows up to 0.4 ms per request.",
    )
    prediction_log_flush_s: float = Field(10.0, gt=0, description="...or once the oldest waiting row is this old.")
    state_dir: Path = Field(
        Path(".bentoml"),
        validation_alias=flat("state_dir", "serve_state_dir"),
        description="The service's local state, under ITFF_HOME when relative: "
        "<port>/ is each service's BENTOML_HOME (make serve), tradingview-signatures/ the replay cache.",
    )
    service_url: str = Field(
        "http://127.0.0.1:3000", description="The BentoML service the champion sensor tells to reload."
    )


class MonitoringSettings(Section):
    """The prediction log's outcomes, drift and live quality, and when they request a retrain."""

    root: Path = Field(
        Path("data_lake/monitoring"),
        validation_alias=flat("root", "monitoring_dir"),
        description="Delta tables of the prediction log and decisions, under home when relative.",
    )
    live_quality_window_days: int = Field(
        30,
        ge=1,
        description="Days of realized predictions, before an evaluation's as_of, "
        "that live quality per model version is computed over.",
    )
    drift_recent_days: int = Field(30, ge=1, description="Days of recent data compared with the training window.")
    drift_reference_days: int = Field(
        365,
        ge=7,
        description="Days of the training window (up to the champion's last training bar) drift compares against.",
    )
    drift_psi_warn: float = Field(0.1, gt=0, description="Population stability index at which a feature drift warns.")
    drift_psi_error: float = Field(
        0.25, gt=0, description="PSI at which drift is an error and retraining is requested."
    )
    drift_ks_warn: float = Field(
        0.1, gt=0, le=1, description="Kolmogorov-Smirnov statistic at which a feature drift warns."
    )
    drift_ks_error: float = Field(
        0.2, gt=0, le=1, description="Kolmogorov-Smirnov statistic at which drift is an error."
    )
    drift_features_for_retrain: int = Field(
        3,
        ge=1,
        description="Features drifting at the error level before drift alone "
        "requests retraining: one volatility-level feature moving with the market is normal.",
    )
    regime_shift_warn: float = Field(0.1, gt=0, description="PSI of the regime mix (training vs recent) that warns.")
    regime_shift_error: float = Field(0.25, gt=0, description="PSI of the regime mix that is an error.")
    quality_log_loss_warn: float = Field(0.02, gt=0, description="Live log loss this far above the backtest's warns.")
    quality_log_loss_error: float = Field(0.05, gt=0, description="...and this far above it requests retraining.")
    min_live_outcomes: int = Field(24, ge=1, description="Realized predictions needed before live quality is judged.")
    drift_false_alarm_rate: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Share of stable windows allowed to reach a "
        "drift error: each feature's PSI/KS error threshold (and the regime mix's) is the "
        "statistic's (1 - rate) quantile over windows of the reference period, floored by "
        "the fixed *_ERROR thresholds.",
    )
    drift_warn_false_alarm_rate: float = Field(
        0.1, gt=0, lt=0.5, description="The same for the warn thresholds, floored by the fixed *_WARN ones."
    )
    drift_calibration_step_days: int = Field(
        3,
        ge=1,
        description="Days between the starts of the reference windows whose "
        "drift, against the rest of the reference, calibrates the thresholds.",
    )
    drift_cooldown_days: int = Field(
        30,
        ge=0,
        description="A model sent for retraining is not sent again until this many "
        "days after that decision (its as-of time); 0 switches the cooldown off.",
    )
    drift_mape_error: float = Field(
        0.08,
        gt=0,
        description="Live forward_return MAPE (a fraction, as live quality reports "
        "it) above which that champion is retrained: runbook 001's 8 %.",
    )
    drift_precision_recall_max: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Live precision or recall of the served long "
        "calls this far (absolute) from the backtest's retrains a classification "
        "champion, which re-selects its threshold: runbooks 000/002's weekly 5 %.",
    )
    drift_precision_recall_days: int = Field(
        7, ge=1, description="Days of realized outcomes the precision/recall check reads."
    )
    drift_precision_recall_alpha: float = Field(
        0.05,
        gt=0,
        le=1,
        description="A precision/recall gap past the maximum "
        "retrains only if a binomial test against the backtest's rate also gives p "
        "below this: a week's few dozen calls carry a standard error above 5 points. "
        "1 judges the gap alone.",
    )


class AutomationSettings(Section):
    """The daily refresh and weekly evaluation: Dagster schedules and sensors."""

    enabled: bool = Field(
        False,
        validation_alias=flat("enabled", "automation_on"),
        description="Schedules and sensors start switched on (else: switch them on in the Dagster UI).",
    )
    daily_run_utc: str = Field(
        "02:15", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM (UTC) the daily refresh starts."
    )
    daily_trials: int = Field(2, ge=1, description="Optuna trials per family in the daily retrain (the budget).")
    daily_torch_trials: int = Field(1, ge=1, description="Trials for the torch families in the daily retrain.")
    weekly_evaluation_cron: str = Field("0 6 * * 1", description="Cron (UTC) of the weekly evaluation job.")


class TrackingSettings(Section):
    """MLflow (runs, registry) and Optuna (studies) storage."""

    mlflow_dir: Path = Field(
        Path("mlflow"),
        description="MLflow's SQLite store, artifacts and Optuna's study store, under home when relative.",
    )
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; unset: SQLite in mlflow_dir.")
    mlflow_ui_url: str = Field(
        "http://127.0.0.1:5000", description="Where `make dev` serves the MLflow UI; used in links."
    )
    optuna_storage: str | None = Field(None, description="Optuna storage URL; unset: SQLite in mlflow_dir.")


class ClusterSettings(Section):
    """The cluster profile (docs/scale-out.md): Postgres, Redis, an MLflow server and distributed workers.
    The embedded profile (the default, `make run`) uses none of these settings."""

    profile: Literal["embedded", "cluster"] = Field(
        "embedded",
        description="embedded: SQLite stores, one machine (make run). cluster: Dagster, MLflow and Optuna on "
        "Postgres, steps on distributed workers (make cluster).",
    )
    postgres_url: str = Field(
        "postgresql://itff@127.0.0.1:55432",
        description="Postgres server (no database name) holding the dagster, mlflow and optuna databases; "
        "a password comes from the environment (PGPASSWORD or the URL in ITFF_POSTGRES_URL), never from the repo.",
    )
    redis_url: str = Field("redis://127.0.0.1:56379/0", description="Redis broker of the distributed executor.")
    mlflow_server_url: str = Field(
        "http://127.0.0.1:5050", description="The MLflow tracking server (runs, registry, artifacts) of the cluster."
    )
    dagster_port: int = Field(3301, description="The cluster's Dagster webserver port (make cluster).")
    workers: int = Field(2, ge=1, description="Executor workers `make cluster` starts on this machine.")
    cluster_dir: Path = Field(
        Path(".cluster"),
        description="Where `make cluster` keeps its Postgres data, logs and pids, under home when relative.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED_DELIMITER, extra="ignore")

    # --- what the platform covers, read by every section
    home: Path = Field(default_factory=Path.cwd, description="Project root; relative paths hang off it.")
    source: Literal["sample", "files", "binance"] = Field(
        "sample", description="Where candles come from (its own settings are under sources)."
    )
    symbols: list[str] = Field(["BTCUSDT", "ETHUSDT"], description="Symbols ingested, trained and served.")
    interval: str = Field("1h", description=f"Bar length, one of {', '.join(INTERVAL_SECONDS)}.")
    start_date: date = Field(date(2021, 4, 1), description="First day ingested (its month is the first partition).")
    end_date: date | None = Field(
        None,
        description="First day not ingested; unset: through the current month, or the "
        "packaged sample's end (sources.sample.end_date) with ITFF_SOURCE=sample.",
    )
    reports_dir: Path = Field(Path("reports"), description="Markdown and figure reports, under home when relative.")

    lake: LakeSettings = Field(default_factory=LakeSettings, description=LakeSettings.__doc__)
    sources: SourcesSettings = Field(default_factory=SourcesSettings, description=SourcesSettings.__doc__)
    features: FeatureSettings = Field(default_factory=FeatureSettings, description=FeatureSettings.__doc__)
    training: TrainingSettings = Field(default_factory=TrainingSettings, description=TrainingSettings.__doc__)
    trading: TradingSettings = Field(default_factory=TradingSettings, description=TradingSettings.__doc__)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings, description=PromotionSettings.__doc__)
    serving: ServingSettings = Field(default_factory=ServingSettings, description=ServingSettings.__doc__)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings, description=MonitoringSettings.__doc__)
    automation: AutomationSettings = Field(default_factory=AutomationSettings, description=AutomationSettings.__doc__)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings, description=TrackingSettings.__doc__)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings, description=ClusterSettings.__doc__)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # After the ordinary environment (ITFF_SYMBOLS, ITFF_TRAINING__TRIALS), the flat names of section fields.
        return init_settings, env_settings, FlatEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _flat_names_to_sections(cls, data: Any) -> Any:
        return nest(data) if isinstance(data, Mapping) else data

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

    @model_validator(mode="after")
    def _anchor_paths(self) -> Settings:
        for name in ANCHORED_PATHS:
            *sections, leaf = LEAVES[name].path
            owner = self
            for section in sections:
                owner = getattr(owner, section)
            if not getattr(owner, leaf).is_absolute():
                setattr(owner, leaf, self.home / getattr(owner, leaf))
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy with `update` applied, by flat name ({"trials": 1}) or by section ({"training": {"trials": 1}}).
        Like pydantic's, it does not validate; the sections it leaves alone are shared with the original."""
        if not update:
            return super().model_copy(deep=deep)
        return cast(Settings, _copy_with(self, nest(update), deep))

    def flat_dump(self, exclude: Collection[str] = (), **dump_options: Any) -> dict[str, Any]:
        """Every field by its flat name ({"trials": 3, "lake_dir": ...}) but those in `exclude`: what fingerprints
        hash. Excluded fields are never serialized (a copy's unvalidated value need not be)."""
        nested_exclude: dict[str, Any] = {}
        for name in exclude:
            *sections, field = LEAVES[name].path
            owner = nested_exclude
            for section in sections:
                owner = owner.setdefault(section, {})
            owner[field] = True
        dumped = self.model_dump(exclude=nested_exclude, **dump_options)
        values = {}
        for name, leaf in LEAVES.items():
            if name in exclude:
                continue
            value = dumped
            for part in leaf.path:
                value = value[part]
            values[name] = value
        return values

    def for_display(self) -> dict[str, Any]:
        """The settings as JSON-ready values with every secret hidden: tokens masked, passwords in URIs redacted."""
        shown = self.model_dump(mode="json")  # SecretStr dumps as "**********"
        for name in (
            "mlflow_tracking_uri",
            "optuna_storage",
            "service_url",
            "mlflow_ui_url",
            "binance_base_url",
            "binance_archive_url",
            "postgres_url",
            "redis_url",
            "mlflow_server_url",
        ):
            *sections, field = LEAVES[name].path
            owner = shown
            for section in sections:
                owner = owner[section]
            if owner.get(field):
                owner[field] = redact_uri(owner[field])
        return shown

    @property
    def clustered(self) -> bool:
        return self.cluster.profile == "cluster"

    @property
    def tracking_uri(self) -> str:
        """MLflow's store: an explicit ITFF_MLFLOW_TRACKING_URI, else the cluster's MLflow server, else SQLite."""
        if self.tracking.mlflow_tracking_uri:
            return self.tracking.mlflow_tracking_uri
        if self.clustered:
            return self.cluster.mlflow_server_url
        return f"sqlite:///{self.tracking.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts; None: where the tracking server chooses (it serves them)."""
        if self.clustered and not self.tracking.mlflow_tracking_uri:
            return None
        return (self.tracking.mlflow_dir / "artifacts").as_uri()

    @property
    def study_storage(self) -> str:
        """Optuna's storage: an explicit ITFF_OPTUNA_STORAGE, else the cluster's Postgres, else SQLite."""
        if self.tracking.optuna_storage:
            return self.tracking.optuna_storage
        if self.clustered:
            return self.postgres_database("optuna", driver="psycopg")
        return f"sqlite:///{self.tracking.mlflow_dir / 'optuna.db'}"

    def postgres_database(self, name: str, driver: str | None = None) -> str:
        """The URL of one database of the cluster's Postgres server; `driver` picks the SQLAlchemy dialect's
        driver (postgresql+psycopg://): Optuna's is psycopg 3, MLflow's and dagster-postgres' psycopg2."""
        url = urlsplit(self.cluster.postgres_url)
        scheme = f"{url.scheme.split('+')[0]}+{driver}" if driver else url.scheme
        return url._replace(scheme=scheme, path=f"/{name}").geturl()

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
            return self.sources.sample.end_date
        return next_month(date.today())


@dataclass(frozen=True)
class Leaf:
    """One setting: its flat name (ITFF_<NAME>, Settings(<name>=...)), its attribute path and its pydantic field."""

    name: str
    path: tuple[str, ...]
    info: FieldInfo

    @property
    def env_names(self) -> tuple[str, ...]:
        """The environment variables that set it: the flat name first, then the path form where that differs."""
        names = [ENV_PREFIX + self.name.upper()]
        if len(self.path) > 1:
            names.append(ENV_PREFIX + NESTED_DELIMITER.join(self.path).upper())
        return tuple(names)


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _leaves(info.annotation, (*prefix, name))
        else:
            alias = info.validation_alias
            yield Leaf(str(alias.choices[-1]) if isinstance(alias, AliasChoices) else name, (*prefix, name), info)


# Every setting by flat name, in schema order: the one map from flat names to sections, derived from the classes.
LEAVES: dict[str, Leaf] = {leaf.name: leaf for leaf in _leaves(Settings)}
BY_PATH: dict[tuple[str, ...], Leaf] = {leaf.path: leaf for leaf in LEAVES.values()}
SECTIONS = tuple(
    name
    for name, info in Settings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
)
assert len(LEAVES) == len(BY_PATH) and not set(LEAVES) & set(SECTIONS), "flat names must be unique"
# Paths taken relative to home.
ANCHORED_PATHS = ("reports_dir", "lake_dir", "drop_dir", "mlflow_dir", "monitoring_dir", "cluster_dir")


def leaf_at(loc: tuple[str | int, ...]) -> Leaf | None:
    """The setting a validation error's location points into (("training", "trials") or ("lake", "lake_dir"))."""
    for size in range(len(loc), 0, -1):
        if not all(isinstance(part, str) for part in loc[:size]):
            continue
        path = tuple(str(part) for part in loc[:size])
        *sections, last = path
        leaf = BY_PATH.get(path) or next(
            (known for known in LEAVES.values() if known.path[:-1] == tuple(sections) and known.name == last), None
        )
        if leaf is not None:
            return leaf
    return None


def nest(data: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names moved into their sections: {"trials": 3} -> {"training": {"trials": 3}}. A flat name wins over
    the same field given by section, as the more specific of the two in a call."""
    nested = dict(data)
    for name in [key for key in data if key in LEAVES and len(LEAVES[key].path) > 1]:
        value = nested.pop(name)
        *sections, field = LEAVES[name].path
        owner = nested
        for section in sections:
            child = owner.get(section)
            owner[section] = child.model_dump() if isinstance(child, BaseModel) else dict(child or {})
            owner = owner[section]
        owner[field] = value
    return nested


def _copy_with(model: BaseModel, changes: Mapping[str, Any], deep: bool) -> Any:
    """pydantic's model_copy, recursing into sections given as dicts instead of replacing them by the dict."""
    resolved = {}
    for key, value in changes.items():
        current = getattr(model, key, None)
        resolved[key] = (
            _copy_with(current, value, deep) if isinstance(current, BaseModel) and isinstance(value, Mapping) else value
        )
    return BaseModel.model_copy(model, update=resolved, deep=deep)


class FlatEnvSource(EnvSettingsSource):
    """ITFF_<FLAT_NAME> for the fields inside sections (ITFF_TRIALS, ITFF_LAKE_DIR): the names from before the
    sections, still read. ITFF_TRAINING__TRIALS, read by the ordinary source before this one, wins over ITFF_TRIALS."""

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, leaf in LEAVES.items():
            if len(leaf.path) == 1:
                continue  # a top-level field: the ordinary source reads it
            raw = self.env_vars.get(
                f"{self.env_prefix}{name}" if self.case_sensitive else f"{self.env_prefix}{name}".lower()
            )
            if raw is None:
                continue
            try:
                value = self.prepare_field_value(name, leaf.info, raw, self._field_is_complex(leaf.info)[0])
            except ValueError as e:
                raise SettingsError(
                    f'error parsing value for field "{name}" from source "{type(self).__name__}"'
                ) from e
            found[name] = value
        return nest(found)


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
