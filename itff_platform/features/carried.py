"""build_features folded forward: a window's newest bars computed from the state a computed window left behind.

A client that slides its window one bar per request sends a new window every time. build_features costs ~6 ms of
polars per window whatever its length (its ~300 expressions, not its rows). When the window's bars up to some bar
were computed already, the bars after it are folded in here, one at a time, in plain Python arithmetic: each
smoother (EMA, Wilder) takes one step from its last value, each rolling feature reads the short tail it needs
(FoldState). The formulas are indicators.py's, step for step; itff_platform_tests/serving/test_online.py pins
the folded features to build_features over many slides of the real sample.

Equal, not bit-identical. Each smoother steps as polars does (from the same first bar its state is polars' bit for
bit), but it carries history from the anchor's first bar, not the window's: that stays far below 1e-9 relative when
the row has at least history_bars_needed bars before it (the lake's own warm-up argument: the seed's influence has
decayed by (1 - alpha)^600), which serving.candle_windows requires of every row it folds. A rolling mean is added up in
another order than polars' sliding sum: `conditioned` refuses (NotFoldable) where that rounding could reach 1e-9 of
the dispersion it is divided by (a stablecoin, a frozen price), and the window is computed whole.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from itff_platform.features.indicators import cycle_tables
from itff_platform.features.regime import SLOPE_BARS
from itff_platform.settings import Settings

# The smoothers' intermediate columns: build_features(keep=CARRIED_COLUMNS) keeps them for FoldState.after.
CARRIED_COLUMNS = (
    "_ema_fast",
    "_ema_slow",
    "_ema_trend",
    "_sm_tr",
    "_avg_gain",
    "_avg_loss",
    "_sm_plus_dm",
    "_sm_minus_dm",
    "_esa",
    "_wt_deviation",
)
SMOOTHED = (*CARRIED_COLUMNS, "atr", "macd_signal", "adx", "wavetrend")  # every smoother's last value
MICROSECONDS = 1_000_000
CONDITION = 2 * np.finfo(np.float64).eps * 1e9  # conditioned(): rounding per slide, over the 1e-9 promised
THIRD = 1 / 3  # polars computes `x / 3` as `x * (1 / 3)`: the typical price must be rounded the same way


class NotFoldable(Exception):
    """A value a smoother or the regime needs is undefined here (a warm-up, a zero deviation): compute the window."""


@dataclass(frozen=True)
class FoldState:
    """What the next bar's features read: the smoothers' last values and, newest last, the trailing values of
    each rolling input (as many as its window holds besides the new bar). Immutable: a fold returns a new state."""

    smoothed: dict[str, float]
    closes: tuple[float, ...]
    highs: tuple[float, ...]
    lows: tuple[float, ...]
    volumes: tuple[float, ...]
    typical: tuple[float, ...]
    returns: tuple[float, ...]  # log_return_1
    volatility: tuple[float, ...]  # realized_vol, in bar order
    volatility_sorted: tuple[float, ...]  # the same values, sorted: the regime's rolling quantile
    day_ranges: tuple[float, ...]
    trend: tuple[float, ...]  # _ema_trend
    wavetrend: tuple[float, ...]

    @classmethod
    def after(cls, silver: pl.DataFrame, settings: Settings) -> FoldState:
        """The state after `silver`'s last row (build_features(keep=CARRIED_COLUMNS) output, sorted by time)."""
        f, spans = settings.features, _spans(settings)
        if silver.height < spans["day_ranges"] + settings.bars_per_day:
            raise NotFoldable("window shorter than the daily range's look-back")
        last = silver.tail(1)
        smoothed = {name: last[name][0] for name in SMOOTHED}

        def tail(column: str, n: int) -> tuple[float, ...]:
            values = silver[column].tail(n).to_numpy()
            if len(values) < n or not np.isfinite(values).all():
                raise NotFoldable(f"{column} is undefined in the carried tail")
            return tuple(values.tolist())

        candles = silver.tail(spans["day_ranges"] + settings.bars_per_day - 1)
        high, low = candles["high"].to_numpy(), candles["low"].to_numpy()
        windows = np.lib.stride_tricks.sliding_window_view
        ranges = windows(high, settings.bars_per_day).max(axis=1) - windows(low, settings.bars_per_day).min(axis=1)
        prices = silver.tail(f.cci_period - 1)  # not `candles`: with 1d bars the daily ranges read fewer bars
        typical = (prices["high"] + prices["low"] + prices["close"]) * THIRD  # as indicators.typical_price
        volatility = tail("realized_vol", f.regime_volatility_lookback - 1)
        state = cls(
            smoothed=smoothed,
            closes=tail("close", spans["closes"]),
            highs=tail("high", spans["day_bars"]),
            lows=tail("low", spans["day_bars"]),
            volumes=tail("volume", f.volume_zscore_window - 1),
            typical=tuple(typical.to_list()),
            returns=tail("log_return_1", f.volatility_window - 1),
            volatility=volatility,
            volatility_sorted=tuple(sorted(volatility)),
            day_ranges=tuple(ranges.tolist()),
            trend=tail("_ema_trend", SLOPE_BARS),
            wavetrend=tail("wavetrend", 3),
        )
        if not all(v is not None and math.isfinite(v) for v in smoothed.values()):
            raise NotFoldable("a smoother is undefined at the carried bar")
        return state

    def fold(
        self, settings: Settings, stamp_us: int, bar: tuple[float, float, float, float, float], height: int
    ) -> Fold:
        """The next bar's silver row (every non-label column) and the state after it, in a window of `height` bars.
        NotFoldable where a rolling mean's rounding could show (conditioned)."""
        f = settings.features
        o, h, lo, c, v = bar
        s = self.smoothed
        row: dict[str, Any] = {"timestamp": stamp_us, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        previous_close, previous_high, previous_low = self.closes[-1], self.highs[-1], self.lows[-1]
        for lag in f.return_lags:
            row[f"log_return_{lag}"] = math.log(c / self.closes[-lag])
        closes = (*self.closes[len(self.closes) - f.bollinger_period + 1 :], c)
        mean = sum(closes) / f.bollinger_period
        std = math.sqrt(sum((x - mean) ** 2 for x in closes) / f.bollinger_period)
        conditioned(std, max(closes), height)
        width = f.bollinger_width
        row["bollinger_pct_b"] = None if std == 0 else (c - (mean - width * std)) / (2 * width * std)
        volumes = (*self.volumes, v)
        mean = sum(volumes) / len(volumes)
        std = math.sqrt(sum((x - mean) ** 2 for x in volumes) / (len(volumes) - 1))
        conditioned(std, max(volumes), height)
        row["volume_zscore"] = None if std == 0 else (v - mean) / std
        row.update(_calendar(stamp_us))
        returns = (*self.returns, row["log_return_1"])
        row["realized_vol"] = realized = math.sqrt(sum(r * r for r in returns))
        # stage 1: per-bar inputs (indicators.true_range, gains_and_losses, directional_movement, typical_price)
        true_range = max(h - lo, abs(h - previous_close), abs(lo - previous_close))
        change = c - previous_close
        gain, loss = max(change, 0.0), max(-change, 0.0)
        up, down = h - previous_high, previous_low - lo
        plus_dm = up if up > down and up > 0 else 0.0
        minus_dm = down if down > up and down > 0 else 0.0
        typical_price = (h + lo + c) * THIRD
        typical = (*self.typical, typical_price)
        typical_mean = sum(typical) / f.cci_period
        step = {
            "_ema_fast": _ema(s["_ema_fast"], c, _span(f.macd_fast)),
            "_ema_slow": _ema(s["_ema_slow"], c, _span(f.macd_slow)),
            "_ema_trend": _ema(s["_ema_trend"], c, _span(f.regime_slope_period)),
            # stage 2
            "atr": _ema(s["atr"], true_range, 1 / f.atr_period),
            "_sm_tr": _ema(s["_sm_tr"], true_range, 1 / f.adx_period),
            "_avg_gain": _ema(s["_avg_gain"], gain, 1 / f.rsi_period),
            "_avg_loss": _ema(s["_avg_loss"], loss, 1 / f.rsi_period),
            "_sm_plus_dm": _ema(s["_sm_plus_dm"], plus_dm, 1 / f.adx_period),
            "_sm_minus_dm": _ema(s["_sm_minus_dm"], minus_dm, 1 / f.adx_period),
            "_esa": _ema(s["_esa"], typical_price, _span(f.wavetrend_channel)),
        }
        row["atr"] = atr = step["atr"]
        row["macd"] = macd = step["_ema_fast"] - step["_ema_slow"]
        deviation = 0.0
        for value in reversed(typical):  # indicators.cci: lag 0 first, added left to right
            deviation = deviation + abs(value - typical_mean)
        deviation *= 1 / f.cci_period  # polars divides by a literal as a product with its reciprocal
        conditioned(deviation, max(map(abs, typical)), height)
        row["cci"] = None if deviation == 0 else (typical_price - typical_mean) / (0.015 * deviation)
        earlier = len(self.highs) - settings.bars_per_day + 1  # the day's bars before this one (none for 1d bars)
        day_range = max((*self.highs[earlier:], h)) - min((*self.lows[earlier:], lo))
        day_ranges = (*self.day_ranges, day_range)
        total = day_range
        for d in range(1, f.daily_range_days):  # indicators.average_daily_range: day 0 first
            total = total + day_ranges[-1 - d * settings.bars_per_day]
        row["average_daily_range"] = total * (1 / f.daily_range_days) / c
        # stage 3
        gain_avg, loss_avg = step["_avg_gain"], step["_avg_loss"]
        row["rsi"] = (50.0 if gain_avg == 0 else 100.0) if loss_avg == 0 else 100 - 100 / (1 + gain_avg / loss_avg)
        row["plus_di"] = plus_di = 100 * step["_sm_plus_dm"] / step["_sm_tr"]
        row["minus_di"] = minus_di = 100 * step["_sm_minus_dm"] / step["_sm_tr"]
        step["_wt_deviation"] = _ema(s["_wt_deviation"], abs(typical_price - step["_esa"]), _span(f.wavetrend_channel))
        row["macd_signal"] = step["macd_signal"] = _ema(s["macd_signal"], macd, _span(f.macd_signal))
        row["atr_pct"] = atr / c
        row["trend_slope"] = slope = (step["_ema_trend"] - self.trend[-SLOPE_BARS]) / atr
        volatility_sorted = list(self.volatility_sorted)
        bisect.insort(volatility_sorted, realized)
        ceiling = _quantile(volatility_sorted, f.regime_volatility_quantile)
        # stage 4
        total_di = plus_di + minus_di
        dx = 0.0 if total_di == 0 else 100 * abs(plus_di - minus_di) / total_di
        if step["_wt_deviation"] == 0:
            raise NotFoldable("the WaveTrend channel index is undefined (zero deviation)")
        channel = (typical_price - step["_esa"]) / (0.015 * step["_wt_deviation"])
        row["macd_hist"] = macd - step["macd_signal"]
        # stage 5
        row["adx"] = adx = step["adx"] = _ema(s["adx"], dx, 1 / f.adx_period)
        row["wavetrend"] = step["wavetrend"] = _ema(s["wavetrend"], channel, _span(f.wavetrend_average))
        for name in ("macd", "macd_signal", "macd_hist"):
            row[f"{name}_pct"] = row[name] / c
        row["wavetrend_signal"] = sum((*self.wavetrend, step["wavetrend"])) / 4
        row["regime"] = _regime(settings, realized, ceiling, adx, slope)
        oldest = self.volatility[0]
        del volatility_sorted[bisect.bisect_left(volatility_sorted, oldest)]
        state = FoldState(
            smoothed=step,
            closes=(*self.closes[1:], c),
            highs=(*self.highs[1:], h),
            lows=(*self.lows[1:], lo),
            volumes=volumes[1:],
            typical=typical[1:],
            returns=returns[1:],
            volatility=(*self.volatility[1:], realized),
            volatility_sorted=tuple(volatility_sorted),
            day_ranges=day_ranges[1:],
            trend=(*self.trend[1:], step["_ema_trend"]),
            wavetrend=(*self.wavetrend[1:], step["wavetrend"]),
        )
        return Fold(state, row)


@dataclass(frozen=True)
class Fold:
    state: FoldState
    row: dict[str, Any]


def conditioned(dispersion: float, largest: float, height: int) -> None:
    """NotFoldable unless a rolling mean's rounding stays below 1e-9 of the dispersion it is divided by.

    polars' rolling means (and stds) are sliding sums started at the window's first bar, so their rounding depends
    on where the window starts; the fold (and an anchor's rows) add the same values up from elsewhere. Each slide
    rounds the running sum twice, so the mean can be off by 2 * height * eps * largest; %B, the volume z-score and
    the CCI divide (value - mean) by a dispersion, so that error reaches them divided by it. Ordinary markets clear
    this by orders of magnitude (BTC hourly: std/price ~1e-2 against ~4e-4 for 800 bars); a stablecoin's 1e-5 wiggles,
    or a frozen price (dispersion 0, where polars' sliding std may not give 0), do not: the window is computed whole."""
    if not dispersion >= CONDITION * height * largest:
        raise NotFoldable("too little dispersion for a folded rolling mean to round as build_features' does")


def well_conditioned_from(silver: pl.DataFrame, settings: Settings, height: int) -> int:
    """The first row of `silver` (OHLCV, sorted) from which every row passes `conditioned` (vectorised): a model
    reading a row before it from a window that is not computed whole could get another rounding."""
    f = settings.features
    windows = np.lib.stride_tricks.sliding_window_view
    close, volume = silver["close"].to_numpy(), silver["volume"].to_numpy()
    typical = ((silver["high"] + silver["low"] + silver["close"]) * THIRD).to_numpy()
    ill = np.zeros(silver.height, dtype=bool)
    for values, period, ddof in ((close, f.bollinger_period, 0), (volume, f.volume_zscore_window, 1)):
        if len(values) >= period:
            tails = windows(values, period)
            ill[period - 1 :] |= ~(tails.std(axis=1, ddof=ddof) >= CONDITION * height * tails.max(axis=1))
    if len(typical) >= f.cci_period:
        tails = windows(typical, f.cci_period)
        deviation = np.abs(tails - tails.mean(axis=1, keepdims=True)).mean(axis=1)
        ill[f.cci_period - 1 :] |= ~(deviation >= CONDITION * height * np.abs(tails).max(axis=1))
    return int(np.flatnonzero(ill)[-1]) + 1 if ill.any() else 0


def _spans(settings: Settings) -> dict[str, int]:
    f = settings.features
    return {
        "closes": max(*f.return_lags, f.bollinger_period - 1),
        "day_ranges": (f.daily_range_days - 1) * settings.bars_per_day,
        # highs and lows: the day's earlier bars for its range, and at least the previous bar for the directional
        # movement (a 1d bar's day is itself alone)
        "day_bars": max(settings.bars_per_day - 1, 1),
    }


def _span(span: int) -> float:
    return 2 / (span + 1)  # polars' ewm_mean(span=...)


def _ema(last: float, value: float, alpha: float) -> float:
    """One step of ewm_mean(adjust=False), as polars writes it."""
    return last + alpha * (value - last)


def _quantile(ordered: list[float], quantile: float) -> float:
    """rolling_quantile(interpolation="linear") over sorted values, polars' formula."""
    position = (len(ordered) - 1) * quantile
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return (position - low) * (ordered[high] - ordered[low]) + ordered[low]


def _calendar(stamp_us: int) -> dict[str, float]:
    day_sin, day_cos = cycle_tables(86400)
    week_sin, week_cos = cycle_tables(7)
    seconds = stamp_us // MICROSECONDS
    second_of_day, day_of_week = seconds % 86400, (seconds // 86400 + 3) % 7
    return {
        "hour_sin": day_sin[second_of_day],
        "hour_cos": day_cos[second_of_day],
        "weekday_sin": week_sin[day_of_week],
        "weekday_cos": week_cos[day_of_week],
    }


def _regime(settings: Settings, realized: float, ceiling: float, adx: float, slope: float) -> str:
    """regime.regime for one bar whose inputs are all defined."""
    f = settings.features
    if realized >= ceiling:
        return "volatile"
    if adx >= f.regime_adx_trend and slope > 0:
        return "trending_up"
    if adx >= f.regime_adx_trend and slope < 0:
        return "trending_down"
    if adx < f.regime_adx_range:
        return "range_bound"
    return "neutral"
