"""The shared rules (itff_platform.rules, itff_platform.manifests): what they answer, and that they stay leaves that
every package can import without a cycle or start-up cost."""

import ast
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from itff_platform.rules import as_utc, model_key, next_month, previous_month, registered_name, task_of

PACKAGE = Path(__file__).resolve().parents[1] / "itff_platform"


@pytest.mark.parametrize("module", ["rules.py", "manifests.py"])
def test_the_shared_rules_import_the_standard_library_only(module):
    tree = ast.parse((PACKAGE / module).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_month_arithmetic_wraps_the_year_and_ignores_the_day_and_time():
    assert next_month(date(2024, 12, 31)) == date(2025, 1, 1) and next_month(date(2024, 2, 1)) == date(2024, 3, 1)
    assert previous_month(date(2024, 1, 15)) == date(2023, 12, 1) and previous_month(date(2024, 3, 1)) == date(
        2024, 2, 1
    )
    assert next_month(datetime(2024, 6, 30, 23, 59, tzinfo=UTC)) == date(2024, 7, 1)


def test_times_are_normalised_to_utc_and_a_naive_time_is_read_as_utc():
    assert as_utc(datetime(2024, 1, 1, 12)) == datetime(2024, 1, 1, 12, tzinfo=UTC)
    paris = datetime(2024, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(paris).tzinfo is UTC and as_utc(paris).hour == 12


def test_names_and_tasks():
    assert registered_name("BTCUSDT", "level_up") == "itff-BTCUSDT-level_up"
    assert model_key("itff-BTCUSDT-level_up") == ("BTCUSDT", "level_up")
    assert [task_of(t) for t in ("direction", "level_up", "forward_return")] == [
        "classification",
        "classification",
        "regression",
    ]
