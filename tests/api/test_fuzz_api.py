"""A bounded schemathesis run over every operation of the API (real Redis, SQLite store): no 5xx, every
response as the OpenAPI schema declares it. The longer run is `just fuzz` (python -m tests.api.fuzz)."""

from __future__ import annotations

from pathlib import Path

from tests.api.fuzz import fuzz, running_api


def test_fuzz_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    with running_api(tmp_path) as url:
        report = fuzz(url, examples=8)
    assert report.operations > 40 and report.requests > 400, report.summary()
    assert report.server_errors == [], report.server_errors[:5]
    assert report.violations == [], report.violations[:5]
