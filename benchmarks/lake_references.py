"""The silver feature set computed two other ways, for `make bench-lake` to put rows/s side by side: pandas
(rolling/ewm), and TA-Lib (its C kernels) where TA-Lib has the indicator, numpy where it has not.

Compute only, from numpy arrays in memory: no Delta, no regime, no labels. The same columns as
features.silver.feature_columns, on the same settings; `agreement` reports how far each lies from silver once
warmed up (TA-Lib seeds its EMAs with a mean, silver with the first value: they converge within the warm-up).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from itff_platform.settings import Settings

Arrays = dict[str, np.ndarray]


def _calendar(timestamp_s: np.ndarray) -> Arrays:
    day = 2 * np.pi * (timestamp_s % 86400) / 86400
    week = 2 * np.pi * ((timestamp_s // 86400 + 3) % 7) / 7
    return {"hour_sin": np.sin(day), "hour_cos": np.cos(day), "weekday_sin": np.sin(week), "weekday_cos": np.cos(week)}


def _average_daily_range(day_range: np.ndarray, close: np.ndarray, days: int, bars_per_day: int) -> np.ndarray:
    total = np.zeros_like(day_range)
    for d in range(days):
        shifted = np.full_like(day_range, np.nan)
        shifted[d * bars_per_day :] = day_range[: len(day_range) - d * bars_per_day]
        total += shifted
    return total / days / close


def _wilder(values: pd.Series, n: int) -> pd.Series:
    """Wilder's smoothing seeded with the mean of the first n defined values, as silver's."""
    first = values.first_valid_index()
    assert first is not None
    seeded = values.copy()
    seeded.iloc[: first + n - 1] = np.nan
    seeded.iloc[first + n - 1] = values.iloc[first : first + n].mean()
    return seeded.ewm(alpha=1 / n, adjust=False).mean()


def pandas_features(candles: Arrays, settings: Settings) -> Arrays:
    f, bpd = settings.features, settings.bars_per_day
    o = {}
    high, low, close, volume = (pd.Series(candles[c]) for c in ("high", "low", "close", "volume"))
    for lag in f.return_lags:
        o[f"log_return_{lag}"] = np.log(close / close.shift(lag))
    o["realized_vol"] = np.sqrt((o["log_return_1"] ** 2).rolling(f.volatility_window).sum())
    previous = close.shift(1)
    tr = pd.concat([high - low, (high - previous).abs(), (low - previous).abs()], axis=1).max(axis=1)
    tr[previous.isna()] = np.nan
    change = close.diff()
    gain, loss = _wilder(change.clip(lower=0), f.rsi_period), _wilder((-change).clip(lower=0), f.rsi_period)
    o["rsi"] = 100 - 100 / (1 + gain / loss)
    atr = _wilder(tr, f.atr_period)
    o["atr_pct"] = atr / close
    up, down = high.diff(), -low.diff()
    plus_dm = up.where((up > down) & (up > 0), 0.0).where(up.notna())
    minus_dm = down.where((down > up) & (down > 0), 0.0).where(up.notna())
    sm_tr = _wilder(tr, f.adx_period)
    o["plus_di"] = 100 * _wilder(plus_dm, f.adx_period) / sm_tr
    o["minus_di"] = 100 * _wilder(minus_dm, f.adx_period) / sm_tr
    total = o["plus_di"] + o["minus_di"]
    o["adx"] = _wilder(100 * (o["plus_di"] - o["minus_di"]).abs() / total, f.adx_period)
    tp = (high + low + close) / 3
    tp_mean = tp.rolling(f.cci_period).mean()
    # rolling().apply would call Python once per bar; the shifted terms are what silver sums too.
    mean_deviation = sum((tp.shift(lag) - tp_mean).abs() for lag in range(f.cci_period)) / f.cci_period
    o["cci"] = (tp - tp_mean) / (0.015 * mean_deviation)
    esa = tp.ewm(span=f.wavetrend_channel, adjust=False).mean()
    deviation = (tp - esa).abs().ewm(span=f.wavetrend_channel, adjust=False).mean()
    o["wavetrend"] = ((tp - esa) / (0.015 * deviation)).ewm(span=f.wavetrend_average, adjust=False).mean()
    o["wavetrend_signal"] = o["wavetrend"].rolling(4).mean()
    macd = close.ewm(span=f.macd_fast, adjust=False).mean() - close.ewm(span=f.macd_slow, adjust=False).mean()
    signal = macd.ewm(span=f.macd_signal, adjust=False).mean()
    o["macd_pct"], o["macd_signal_pct"], o["macd_hist_pct"] = macd / close, signal / close, (macd - signal) / close
    mean, std = close.rolling(f.bollinger_period).mean(), close.rolling(f.bollinger_period).std(ddof=0)
    width = f.bollinger_width
    o["bollinger_pct_b"] = (close - (mean - width * std)) / (2 * width * std)
    o["volume_zscore"] = (volume - volume.rolling(f.volume_zscore_window).mean()) / volume.rolling(
        f.volume_zscore_window
    ).std(ddof=1)
    day_range = (high.rolling(bpd).max() - low.rolling(bpd).min()).to_numpy()
    o["average_daily_range"] = _average_daily_range(day_range, candles["close"], f.daily_range_days, bpd)
    o |= _calendar(candles["timestamp_s"])
    return {k: np.asarray(v, dtype=np.float64) for k, v in o.items()}


def talib_features(candles: Arrays, settings: Settings) -> Arrays:
    import talib  # dev extra: only the benchmark needs it

    f, bpd = settings.features, settings.bars_per_day
    high, low, close, volume = candles["high"], candles["low"], candles["close"], candles["volume"]
    o: Arrays = {}
    for lag in f.return_lags:
        o[f"log_return_{lag}"] = np.log(talib.ROCR(close, timeperiod=lag))
    o["realized_vol"] = np.sqrt(talib.SUM(o["log_return_1"] ** 2, timeperiod=f.volatility_window))
    o["rsi"] = talib.RSI(close, timeperiod=f.rsi_period)
    o["atr_pct"] = talib.ATR(high, low, close, timeperiod=f.atr_period) / close
    o["adx"] = talib.ADX(high, low, close, timeperiod=f.adx_period)
    o["plus_di"] = talib.PLUS_DI(high, low, close, timeperiod=f.adx_period)
    o["minus_di"] = talib.MINUS_DI(high, low, close, timeperiod=f.adx_period)
    o["cci"] = talib.CCI(high, low, close, timeperiod=f.cci_period)
    tp = (high + low + close) / 3
    esa = talib.EMA(tp, timeperiod=f.wavetrend_channel)
    deviation = talib.EMA(np.abs(tp - esa), timeperiod=f.wavetrend_channel)
    o["wavetrend"] = talib.EMA((tp - esa) / (0.015 * deviation), timeperiod=f.wavetrend_average)
    o["wavetrend_signal"] = talib.SMA(o["wavetrend"], timeperiod=4)
    macd, signal, hist = talib.MACD(close, f.macd_fast, f.macd_slow, f.macd_signal)
    o["macd_pct"], o["macd_signal_pct"], o["macd_hist_pct"] = macd / close, signal / close, hist / close
    upper, _, lower = talib.BBANDS(close, f.bollinger_period, f.bollinger_width, f.bollinger_width)
    o["bollinger_pct_b"] = (close - lower) / (upper - lower)
    n = f.volume_zscore_window
    o["volume_zscore"] = (volume - talib.SMA(volume, n)) / (talib.STDDEV(volume, n) * np.sqrt(n / (n - 1)))
    day_range = talib.MAX(high, timeperiod=bpd) - talib.MIN(low, timeperiod=bpd)
    o["average_daily_range"] = _average_daily_range(day_range, close, f.daily_range_days, bpd)
    o |= _calendar(candles["timestamp_s"])
    return o


def candle_arrays(candles: pl.DataFrame) -> Arrays:
    arrays = {c: candles[c].to_numpy() for c in ("open", "high", "low", "close", "volume")}
    return arrays | {"timestamp_s": candles["timestamp"].dt.epoch("s").to_numpy()}


def agreement(reference: Arrays, silver: pl.DataFrame, skip: int) -> float:
    """The largest difference from silver over every feature past the first `skip` rows, relative to the larger of
    the value and the feature's median magnitude (so values crossing zero do not blow it up)."""
    worst = 0.0
    for name, values in reference.items():
        theirs, ours = values[skip:], silver[name].to_numpy()[skip:].astype(np.float64)
        both = np.isfinite(theirs) & np.isfinite(ours)
        scale = np.maximum(np.abs(ours[both]), np.median(np.abs(ours[both])))
        worst = max(worst, float(np.max(np.abs(theirs[both] - ours[both]) / scale, initial=0.0)))
    return worst
