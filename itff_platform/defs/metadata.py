"""Metadata in Dagster's own vocabulary, so the UI shows it where it looks: owners, a table's column schema, and per
(symbol, month) partition its row count, Delta table URI and version."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl
from dagster import TableColumn, TableColumnConstraints, TableConstraints, TableSchema

from itff_platform.defs.partitions import symbol_and_month

OWNERS = ["team:itff"]


def table_schema(model: type[pa.DataFrameModel], written: pl.Schema | None = None) -> TableSchema:
    """A pandera model as Dagster's TableSchema: each column's type, nullability, uniqueness and checks, and the
    frame-wide rules. Given the schema of what was written, every written column appears, in order, with the type it
    was written as: silver holds many feature columns its model does not validate, and says so."""
    declared = model.to_schema()
    columns = []
    for name in list(written) if written is not None else list(declared.columns):
        column = declared.columns.get(name)
        dtype = str(written[name]) if written is not None else str(declared.columns[name].dtype)
        if column is None:
            columns.append(TableColumn(name, dtype, description="not validated by the pandera schema"))
            continue
        constraints = TableColumnConstraints(
            nullable=column.nullable, unique=column.unique, other=[check.error or check.name for check in column.checks]
        )
        columns.append(TableColumn(name, dtype, constraints=constraints))
    rules = ([f"unique together: {', '.join(declared.unique)}"] if declared.unique else []) + [
        c.name for c in declared.checks
    ]
    return TableSchema(columns, constraints=TableConstraints(other=rules))


def partition_table_metadata(counts: pl.DataFrame, key, uri: str, version: int | None) -> dict:
    """One partition's row count (from `counts`: symbol, month, rows), the table's URI and the version written."""
    symbol, month = symbol_and_month(key)
    return {
        "dagster/row_count": rows_in(counts, key),
        "dagster/uri": uri,
        "delta_version": version,
        "delta_partition": f"symbol={symbol}/month={month:%Y-%m-%d}",
    }


def rows_in(counts: pl.DataFrame, key) -> int:
    """The rows `counts` (symbol, month, rows) gives the partition `key`; 0 when it holds none."""
    symbol, month = symbol_and_month(key)
    return int(counts.filter((pl.col("symbol") == symbol) & (pl.col("month") == month))["rows"].sum())


def in_partition(frame: pl.DataFrame, key, time_column: str = "month") -> pl.DataFrame:
    """The rows of `frame` that belong to the (symbol, month) partition `key`."""
    symbol, month = symbol_and_month(key)
    moment = pl.col(time_column)
    month_of = moment if frame.schema[time_column] == pl.Date else moment.dt.truncate("1mo").dt.date()
    return frame.filter((pl.col("symbol") == symbol) & (month_of == month))
