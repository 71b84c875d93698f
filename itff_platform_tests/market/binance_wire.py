"""A local HTTP server that speaks Binance's klines REST and archive formats, from real sample candles."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import polars as pl

from itff_platform.settings import INTERVAL_SECONDS

# Binance's spot archives switched open/close times from milliseconds to microseconds with January 2025.
MICROSECOND_ARCHIVES_FROM = datetime(2025, 1, 1, tzinfo=UTC)


class FakeBinance:
    def __init__(self, candles: dict[str, pl.DataFrame]) -> None:
        self.candles = candles
        self.requests: list[str] = []
        self.scripted_failures: list[tuple[int, dict[str, str]]] = []  # served before any real answer
        self.used_weight = 10
        self.unpublished: set[str] = set()  # "YYYY-MM" archives that answer 404, as a month not published yet does
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def archive_requests(self) -> list[str]:
        return [r.rsplit("/", 1)[-1] for r in self.requests if r.startswith("/data/spot/monthly/klines/")]

    def kline_requests(self) -> list[str]:
        return [r for r in self.requests if r.startswith("/api/v3/klines")]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeBinance:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kline_rows(self, symbol: str, interval: str, start_ms: int, end_ms: int, limit: int) -> list[list]:
        frame = self.candles[symbol].with_columns(pl.col("timestamp").dt.epoch("ms").alias("ms"))
        frame = frame.filter(pl.col("ms").is_between(start_ms, end_ms)).head(limit)
        step = INTERVAL_SECONDS[interval] * 1000
        # Binance sends prices and volumes as strings, times as integers.
        return [
            [ms, f"{o:.8f}", f"{h:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{v:.8f}", ms + step - 1, "0", 0, "0", "0", "0"]
            for ms, o, h, lo, c, v in frame.select("ms", "open", "high", "low", "close", "volume").iter_rows()
        ]

    def archive_zip(self, symbol: str, interval: str, stamp: str) -> bytes | None:
        """A monthly archive as data.binance.vision publishes it: a zip holding one header-less CSV of the 12 kline
        columns. Spot archives stamp open and close times in ms up to 2024, in µs from 2025 on."""
        start = datetime.strptime(stamp, "%Y-%m").replace(tzinfo=UTC)
        end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        if stamp in self.unpublished:
            return None
        # kline_rows is inclusive at both ends, as Binance's startTime/endTime are.
        rows = self.kline_rows(symbol, interval, int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1, 10**9)
        if not rows:
            return None
        scale = 1000 if start >= MICROSECOND_ARCHIVES_FROM else 1
        rows = [[r[0] * scale, *r[1:6], r[6] * scale, *r[7:]] for r in rows]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{symbol}-{interval}-{stamp}.csv", "\n".join(",".join(map(str, r)) for r in rows) + "\n")
        return buffer.getvalue()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                if fake.scripted_failures:
                    status, headers = fake.scripted_failures.pop(0)
                    self._send(status, b'{"code":-1003,"msg":"Too many requests"}', headers)
                    return
                url = urlparse(self.path)
                if url.path == "/api/v3/klines":
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    if q["symbol"] not in fake.candles:
                        self._send(400, b'{"code":-1121,"msg":"Invalid symbol."}')
                        return
                    limit = min(int(q.get("limit", 500)), 1000)
                    rows = fake.kline_rows(q["symbol"], q["interval"], int(q["startTime"]), int(q["endTime"]), limit)
                    fake.used_weight += 2
                    self._send(200, json.dumps(rows).encode(), {"X-MBX-USED-WEIGHT-1M": str(fake.used_weight)})
                    return
                parts = url.path.strip("/").split("/")
                if len(parts) == 7 and parts[:3] == ["data", "spot", "monthly"] and parts[3] == "klines":
                    symbol, interval, name = parts[4], parts[5], parts[6]
                    stamp = name.removeprefix(f"{symbol}-{interval}-").removesuffix(".zip")
                    payload = fake.archive_zip(symbol, interval, stamp) if symbol in fake.candles else None
                    if payload is not None:
                        self._send(200, payload, {"Content-Type": "application/zip"})
                        return
                self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")

        return Handler
