"""Fixtures: a fake Messages API per test and an Anthropic analyzer pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from worker.ai.anthropic import AnthropicAnalyzer

TEST_MODEL = "claude-haiku-4-5"
TEST_TIMEOUT = 0.5  # seconds; the fake's "hang" replies outlast it


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


@pytest.fixture
async def analyzer(fake_api: FakeAnthropic) -> AsyncIterator[AnthropicAnalyzer]:
    a = AnthropicAnalyzer(
        api_key="sk-test-not-real", model=TEST_MODEL, base_url=fake_api.base_url, timeout=TEST_TIMEOUT
    )
    yield a
    await a.aclose()
