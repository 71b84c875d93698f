"""Straightforward loop implementations of each indicator, written from the textbook definitions and
sharing no code with itff_platform.features: the yardstick the vectorised versions are held to."""

from __future__ import annotations

import math

NA = None


def log_return(close, lag):
    return [NA if i < lag else math.log(close[i] / close[i - lag]) for i in range(len(close))]


def realized_vol(close, window):
    r = log_return(close, 1)
    return [NA if i < window else math.sqrt(sum(x * x for x in r[i - window + 1 : i + 1])) for i in range(len(close))]


def wilder(values, n):
    """Mean of the first n defined values, then y += (x - y) / n."""
    out = [NA] * len(values)
    first = next(i for i, v in enumerate(values) if v is not NA)
    seed_at = first + n - 1
    if seed_at >= len(values):
        return out
    y = sum(values[first : seed_at + 1]) / n
    out[seed_at] = y
    for i in range(seed_at + 1, len(values)):
        y = y + (values[i] - y) / n
        out[i] = y
    return out


def ema(values, span):
    """TradingView ta.ema: alpha = 2 / (span + 1), seeded with the first defined value."""
    alpha = 2 / (span + 1)
    out, y = [NA] * len(values), NA
    for i, v in enumerate(values):
        if v is NA:
            continue
        y = v if y is NA else alpha * v + (1 - alpha) * y
        out[i] = y
    return out


def sma(values, n):
    out = [NA] * len(values)
    for i in range(n - 1, len(values)):
        window = values[i - n + 1 : i + 1]
        if all(v is not NA for v in window):
            out[i] = sum(window) / n
    return out


def rsi(close, n):
    gains = [NA] + [max(close[i] - close[i - 1], 0.0) for i in range(1, len(close))]
    losses = [NA] + [max(close[i - 1] - close[i], 0.0) for i in range(1, len(close))]
    g, lo = wilder(gains, n), wilder(losses, n)
    out = []
    for a, b in zip(g, lo):
        if a is NA:
            out.append(NA)
        elif b == 0:
            out.append(50.0 if a == 0 else 100.0)
        else:
            out.append(100 - 100 / (1 + a / b))
    return out


def true_range(high, low, close):
    return [NA] + [
        max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1])) for i in range(1, len(close))
    ]


def atr(high, low, close, n):
    return wilder(true_range(high, low, close), n)


def adx(high, low, close, n):
    plus, minus = [NA], [NA]
    for i in range(1, len(close)):
        up, down = high[i] - high[i - 1], low[i - 1] - low[i]
        plus.append(up if up > down and up > 0 else 0.0)
        minus.append(down if down > up and down > 0 else 0.0)
    tr = wilder(true_range(high, low, close), n)
    sp, sm = wilder(plus, n), wilder(minus, n)
    plus_di = [NA if t is NA else 100 * p / t for p, t in zip(sp, tr)]
    minus_di = [NA if t is NA else 100 * m / t for m, t in zip(sm, tr)]
    dx = [NA if p is NA else (0.0 if p + m == 0 else 100 * abs(p - m) / (p + m)) for p, m in zip(plus_di, minus_di)]
    return wilder(dx, n), plus_di, minus_di


def cci(high, low, close, n):
    tp = [(h + lo + c) / 3 for h, lo, c in zip(high, low, close)]
    out = [NA] * len(tp)
    for i in range(n - 1, len(tp)):
        window = tp[i - n + 1 : i + 1]
        mean = sum(window) / n
        deviation = sum(abs(x - mean) for x in window) / n
        out[i] = NA if deviation == 0 else (tp[i] - mean) / (0.015 * deviation)
    return out


def wavetrend(high, low, close, channel, average):
    ap = [(h + lo + c) / 3 for h, lo, c in zip(high, low, close)]
    esa = ema(ap, channel)
    d = ema([abs(a - e) for a, e in zip(ap, esa)], channel)
    ci = [NA if dv == 0 else (a - e) / (0.015 * dv) for a, e, dv in zip(ap, esa, d)]
    wt1 = ema(ci, average)
    return wt1, sma(wt1, 4)


def macd(close, fast, slow, signal):
    line = [f - s for f, s in zip(ema(close, fast), ema(close, slow))]
    sig = ema(line, signal)
    return line, sig, [a - b for a, b in zip(line, sig)]


def percent_b(close, n, width):
    out = [NA] * len(close)
    for i in range(n - 1, len(close)):
        window = close[i - n + 1 : i + 1]
        mean = sum(window) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in window) / n)
        lower, upper = mean - width * std, mean + width * std
        out[i] = (close[i] - lower) / (upper - lower)
    return out


def volume_zscore(volume, n):
    out = [NA] * len(volume)
    for i in range(n - 1, len(volume)):
        window = volume[i - n + 1 : i + 1]
        mean = sum(window) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in window) / (n - 1))
        out[i] = (volume[i] - mean) / std
    return out


def average_daily_range(high, low, close, days, bars_per_day):
    day_range = [NA] * len(close)
    for i in range(bars_per_day - 1, len(close)):
        day_range[i] = max(high[i - bars_per_day + 1 : i + 1]) - min(low[i - bars_per_day + 1 : i + 1])
    out = [NA] * len(close)
    for i in range(len(close)):
        past = [i - d * bars_per_day for d in range(days)]
        if past[-1] >= 0 and day_range[past[-1]] is not NA:
            out[i] = sum(day_range[j] for j in past) / days / close[i]
    return out
