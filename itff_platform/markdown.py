"""Markdown for people: tables (tabulate's GitHub format) and bullet lists, as the Dagster UI and the docs show them.

A leaf: polars and tabulate only, so the Dagster definitions can import it without loading the lake."""

from __future__ import annotations

import polars as pl
from tabulate import tabulate

TABLE_ROWS_SHOWN = 50  # a metadata table longer than this is cut: the UI is for reading, the lake holds all rows


def table(frame: pl.DataFrame, max_rows: int = TABLE_ROWS_SHOWN) -> str:
    """`frame` as a Markdown table, cells as Python prints them (no number reformatting); 'none' when empty."""
    if frame.is_empty():
        return "none"
    text = tabulate(
        frame.head(max_rows).rows(), headers=frame.columns, tablefmt="github", disable_numparse=True, missingval="None"
    )
    if frame.height > max_rows:
        text += f"\n\n{frame.height - max_rows} more row(s) not shown"
    return text


def bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)
