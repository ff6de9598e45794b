"""Fixtures: a fake Messages API per test and an Anthropic analyzer pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from worker.ai.anthropic import AnthropicAnalyzer

TEST_MODEL = "claude-haiku-4-5"
TIMEOUT = 30.0  # seconds: ordinary calls never hit it, even on a loaded machine
SHORT_TIMEOUT = 1.0  # for the timeout cases: the fake's hang replies outlast it


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


def _analyzer(api: FakeAnthropic, timeout: float) -> AnthropicAnalyzer:
    return AnthropicAnalyzer(api_key="sk-test-not-real", model=TEST_MODEL, base_url=api.base_url, timeout=timeout)


@pytest.fixture
async def analyzer(fake_api: FakeAnthropic) -> AsyncIterator[AnthropicAnalyzer]:
    a = _analyzer(fake_api, TIMEOUT)
    yield a
    await a.aclose()


@pytest.fixture
async def impatient_analyzer(fake_api: FakeAnthropic) -> AsyncIterator[AnthropicAnalyzer]:
    a = _analyzer(fake_api, SHORT_TIMEOUT)
    yield a
    await a.aclose()
