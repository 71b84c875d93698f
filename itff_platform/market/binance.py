"""Binance spot candles: whole past months from the monthly archive zips on data.binance.vision, the rest (the
month in progress, a partial first or last month) from the klines REST endpoint.

An archive is one request per month whatever the interval; REST pages KLINES_PAGE klines a request, so a month of
1m candles is 45 requests by REST and 1 by archive. A month whose archive is not published yet (404: Binance
publishes a month's zip a day or so after it ends) comes from REST instead.

HTTP is httpx; tenacity retries what the exchange asks us to retry (429/418 rate limits, 5xx) and network failures.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import polars as pl
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from itff_platform.market.candles import CandleFormatError, empty_candles, within
from itff_platform.market.parsing import read_table_bytes, to_candles
from itff_platform.rules import as_utc, next_month
from itff_platform.settings import INTERVAL_SECONDS

log = logging.getLogger(__name__)

KLINES_PAGE = 1000  # the most klines one REST request returns
# Binance allows 6000 weight per minute per IP; stay well under it and wait out the minute when close.
WEIGHT_BUDGET_PER_MINUTE = 4800
SECONDS_PER_MINUTE = 60  # the weight counter resets with each clock minute
# 418 (IP banned for ignoring 429s) and 429 are rate limits; 5xx are the exchange's own trouble. Others are ours.
RETRY_STATUSES = {418, 429, 500, 502, 503, 504}
# Backoff without a Retry-After: 1, 2, 4 ... s, capped at the one-minute window Binance counts request weight in.
MAX_BACKOFF_S = 60.0
ERROR_BODY_SHOWN = 300  # characters of an error answer quoted in the exception
MS_PER_SECOND = 1000  # REST klines speak epoch milliseconds


class BinanceError(RuntimeError):
    pass


class RetryableAnswer(Exception):
    """An answer worth asking again (RETRY_STATUSES), with the wait the exchange asked for, if any."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response
        retry_after = response.headers.get("Retry-After")
        self.retry_after = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None


def answered(url: str, response: httpx.Response) -> BinanceError:
    detail = response.text[:ERROR_BODY_SHOWN]
    return BinanceError(f"GET {url} answered {response.status_code}: {detail}")


def unresolvable(error: httpx.TransportError) -> socket.gaierror | None:
    """The DNS failure behind a connection error, if that is what it is: waiting will not bring the network back."""
    cause = error.__cause__ or error.__context__
    while cause is not None and not isinstance(cause, socket.gaierror):
        cause = cause.__cause__ or cause.__context__
    return cause


def utc_now() -> datetime:
    return datetime.now(UTC)


class BinanceCandleSource:
    name = "binance"

    def __init__(
        self,
        base_url: str = "https://api.binance.com",
        archive_url: str = "https://data.binance.vision",
        max_retries: int = 6,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.archive_url = archive_url.rstrip("/")
        self.max_retries = max_retries
        self.sleep = sleep
        self.now = now
        self.requests_made = 0
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=True)

    # --- HTTP with the exchange's rate-limit etiquette
    def _get(self, url: str) -> bytes | None:
        """GET with backoff; None on 404 (an archive that does not exist)."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type((RetryableAnswer, httpx.TransportError)),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._get_once, url)
        except RetryableAnswer as error:
            raise answered(url, error.response) from error
        except httpx.TransportError as error:
            raise BinanceError(f"GET {url} failed: {error}") from error

    def _get_once(self, url: str) -> bytes | None:
        self.requests_made += 1
        try:
            response = self.client.get(url)
        except httpx.TransportError as error:
            no_dns = unresolvable(error)
            if no_dns is not None:
                raise BinanceError(
                    f"GET {url}: cannot resolve the host ({no_dns.strerror}); without network "
                    "use ITFF_SOURCE=sample (the packaged candles) or ITFF_SOURCE=files"
                ) from error
            raise
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code in RETRY_STATUSES:
            raise RetryableAnswer(response)
        if response.is_error:
            raise answered(url, response)
        self._respect_weight(response.headers)
        return response.content

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        """The Retry-After the exchange sent, else exponential backoff."""
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableAnswer) and error.retry_after is not None:
            return error.retry_after
        return wait_exponential(multiplier=1, max=MAX_BACKOFF_S)(state)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        what = error.response.status_code if isinstance(error, RetryableAnswer) else repr(error)
        log.warning(
            "Binance answered %s; retrying in %.1fs (attempt %d)", what, state.upcoming_sleep, state.attempt_number
        )

    def _respect_weight(self, headers: httpx.Headers) -> None:
        used = headers.get("x-mbx-used-weight-1m")
        if used is not None and int(used) >= WEIGHT_BUDGET_PER_MINUTE:
            wait = SECONDS_PER_MINUTE - self.now().second + 1  # one second into the next minute
            log.warning("Binance weight %s/min used; pausing %ss", used, wait)
            self.sleep(wait)

    # --- archives for the months that have ended, REST for the rest
    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        start, end = as_utc(start), as_utc(end)
        frames, rest_from = [], start
        for month in archived_months(start, end, self.now()):
            archived = self.fetch_monthly_archive(symbol, interval, month)
            if archived is None:  # not published yet: REST covers it with its neighbours
                continue
            if rest_from < month:
                frames.append(self.fetch_klines(symbol, interval, rest_from, month))
            frames.append(archived)
            rest_from = month_after(month)
        if rest_from < end:
            frames.append(self.fetch_klines(symbol, interval, rest_from, end))
        return within(pl.concat(frames, how="vertical") if frames else empty_candles(), start, end)

    def fetch_monthly_archive(self, symbol: str, interval: str, month: datetime) -> pl.DataFrame | None:
        """One whole month from data.binance.vision's monthly zip (a header-less CSV of klines; open times in ms,
        in µs from 2025 on: parsing reads the unit from the magnitude); None when it is not published."""
        name = f"{symbol}-{interval}-{month:%Y-%m}.zip"
        url = f"{self.archive_url}/data/spot/monthly/klines/{symbol}/{interval}/{name}"
        payload = self._get(url)
        if payload is None:
            log.info("no archive at %s yet; fetching the month by REST", url)
            return None
        return to_candles(read_table_bytes(payload, name), name)

    def fetch_klines(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Closed candles in [start, end) from the REST klines endpoint, KLINES_PAGE at a time."""
        step_ms = INTERVAL_SECONDS[interval] * MS_PER_SECOND
        cursor = int(as_utc(start).timestamp() * MS_PER_SECOND)
        end_ms = int(as_utc(end).timestamp() * MS_PER_SECOND)
        pages: list[list[list[Any]]] = []
        while cursor < end_ms:
            url = (
                f"{self.base_url}/api/v3/klines?symbol={symbol}&interval={interval}"
                f"&startTime={cursor}&endTime={end_ms - 1}&limit={KLINES_PAGE}"
            )
            answer = self._get(url)
            if answer is None:
                raise BinanceError(f"GET {url} answered 404: is the base URL right?")
            rows = json.loads(answer)
            if not isinstance(rows, list):
                raise CandleFormatError(f"klines: expected a JSON list of arrays, got {str(rows)[:ERROR_BODY_SHOWN]}")
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
            {
                name: [str(row[i]) for row in flat]
                for i, name in enumerate(["open_time", "open", "high", "low", "close", "volume"])
            }
        )
        candles = within(to_candles(frame, "klines"), start, end)
        # The newest kline is still forming until its interval has passed: its close would move, and with it the
        # labels of the bars before it. Only closed candles enter the lake.
        closed_by = self.now() - timedelta(seconds=INTERVAL_SECONDS[interval])
        return candles.filter(pl.col("timestamp") <= closed_by)


def month_after(month: datetime) -> datetime:
    following = next_month(month)
    return datetime(following.year, following.month, 1, tzinfo=UTC)


def archived_months(start: datetime, end: datetime, now: datetime) -> list[datetime]:
    """The month starts whose whole month lies in [start, end) and has ended by `now`: what a monthly archive serves."""
    first = datetime(start.year, start.month, 1, tzinfo=UTC)
    month = first if first == start else month_after(first)
    months = []
    while month_after(month) <= min(end, now):
        months.append(month)
        month = month_after(month)
    return months
