"""Binance spot candles: the public klines REST endpoint and the monthly/daily archive zips.

Only the standard library does HTTP here, so the CLI stays quick to start.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import polars as pl

from itff_platform.market.candles import CANDLE_SCHEMA, CandleFormatError, empty_candles, within
from itff_platform.market.parsing import read_table_bytes, to_candles
from itff_platform.rules import as_utc, next_month
from itff_platform.settings import INTERVAL_SECONDS

log = logging.getLogger(__name__)

KLINES_PAGE = 1000
# Binance allows 6000 weight per minute per IP; stay well under it and wait out the minute when close.
WEIGHT_BUDGET_PER_MINUTE = 4800
RETRY_STATUSES = {418, 429, 500, 502, 503, 504}


class BinanceError(RuntimeError):
    pass


class BinanceCandleSource:
    name = "binance"

    def __init__(
        self,
        base_url: str = "https://api.binance.com",
        archive_url: str = "https://data.binance.vision",
        max_retries: int = 6,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.archive_url = archive_url.rstrip("/")
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.requests_made = 0

    # --- HTTP with the exchange's rate-limit etiquette
    def _get(self, url: str) -> tuple[bytes, dict[str, str]] | None:
        """GET with backoff; None on 404 (an archive that does not exist)."""
        for attempt in range(self.max_retries + 1):
            self.requests_made += 1
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                    headers = {k.lower(): v for k, v in response.headers.items()}
                    body = response.read()
                self._respect_weight(headers)
                return body, headers
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                if error.code not in RETRY_STATUSES or attempt == self.max_retries:
                    detail = error.read()[:300].decode("utf-8", errors="replace")
                    raise BinanceError(f"GET {url} answered {error.code}: {detail}") from error
                retry_after = error.headers.get("Retry-After")
                wait = float(retry_after) if retry_after else min(60.0, 2.0**attempt)
                log.warning("Binance answered %s; retrying in %.1fs (attempt %d)", error.code, wait, attempt + 1)
                self.sleep(wait)
            except urllib.error.URLError as error:
                if isinstance(error.reason, socket.gaierror):  # no DNS: waiting will not bring the network back
                    raise BinanceError(f"GET {url}: cannot resolve the host ({error.reason.strerror}); without network "
                                       "use ITFF_SOURCE=sample (the packaged candles) or ITFF_SOURCE=files") from error
                if attempt == self.max_retries:
                    raise BinanceError(f"GET {url} failed: {error.reason}") from error
                self.sleep(min(60.0, 2.0**attempt))
        raise AssertionError("unreachable")

    def _respect_weight(self, headers: dict[str, str]) -> None:
        used = headers.get("x-mbx-used-weight-1m")
        if used is not None and int(used) >= WEIGHT_BUDGET_PER_MINUTE:
            wait = 60 - datetime.now(timezone.utc).second + 1
            log.warning("Binance weight %s/min used; pausing %ss", used, wait)
            self.sleep(wait)

    # --- REST
    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        step_ms = INTERVAL_SECONDS[interval] * 1000
        cursor = int(as_utc(start).timestamp() * 1000)
        end_ms = int(as_utc(end).timestamp() * 1000)
        pages: list[list[list[Any]]] = []
        while cursor < end_ms:
            url = (
                f"{self.base_url}/api/v3/klines?symbol={symbol}&interval={interval}"
                f"&startTime={cursor}&endTime={end_ms - 1}&limit={KLINES_PAGE}"
            )
            answer = self._get(url)
            if answer is None:
                raise BinanceError(f"GET {url} answered 404: is the base URL right?")
            rows = json.loads(answer[0])
            if not isinstance(rows, list):
                raise CandleFormatError(f"klines: expected a JSON list of arrays, got {str(rows)[:200]}")
            if not rows:
                break
            pages.append(rows)
            cursor = int(rows[-1][0]) + step_ms
            if len(rows) < KLINES_PAGE:
                break
        if not pages:
            return empty_candles()
        flat = [row[:6] for page in pages for row in page]
        frame = pl.DataFrame(
            {name: [str(row[i]) for row in flat] for i, name in enumerate(["open_time", "open", "high", "low", "close", "volume"])}
        )
        candles = within(to_candles(frame, "klines"), start, end)
        # The newest kline is still forming until its interval has passed: its close would move, and with it the
        # labels of the bars before it. Only closed candles enter the lake.
        closed_by = datetime.now(timezone.utc) - timedelta(seconds=INTERVAL_SECONDS[interval])
        return candles.filter(pl.col("timestamp") <= closed_by)

    # --- archives: whole months from monthly zips, the remaining days from daily zips
    def fetch_archive(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        frames = []
        for kind, stamp in _archive_periods(as_utc(start).date(), as_utc(end).date()):
            name = f"{symbol}-{interval}-{stamp}.zip"
            url = f"{self.archive_url}/data/spot/{kind}/klines/{symbol}/{interval}/{name}"
            answer = self._get(url)
            if answer is None:
                log.info("no archive at %s", url)
                continue
            frames.append(to_candles(read_table_bytes(answer[0], name), name))
        frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=CANDLE_SCHEMA)
        return within(frame, start, end)


def _archive_periods(first: date, end: date) -> list[tuple[str, str]]:
    """('monthly', 'YYYY-MM') for whole months in [first, end), ('daily', 'YYYY-MM-DD') for the rest."""
    periods: list[tuple[str, str]] = []
    day = first
    while day < end:
        following = next_month(day)
        if day.day == 1 and following <= end:
            periods.append(("monthly", f"{day:%Y-%m}"))
            day = following
        else:
            periods.append(("daily", f"{day:%Y-%m-%d}"))
            day += timedelta(days=1)
    return periods
