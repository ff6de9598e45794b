"""Budgeted analysis: usage counted from the API's figures, over-budget policies, refusal fallback."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis

from settings import Settings
from tests.ai.conftest import TEST_MODEL
from tests.ai.corpus import CORPUS
from tests.support.fake_anthropic import FakeAnthropic, Reply
from worker.ai.analyzer import AiConfig, AnalysisService, OverBudgetPolicy, make_analyzer
from worker.ai.anthropic import AnthropicAnalyzer
from worker.ai.budget import OverBudget, TokenBudget
from worker.ai.heuristic import HeuristicAnalyzer
from worker.ai.models import (
    AnalyzerKind,
    AnalyzerPermanent,
    AnalyzerTransient,
    FallbackReason,
)

EMAIL, _ = CORPUS["work-report"]


def service(
    analyzer: AnthropicAnalyzer, redis: Redis, limit: int, policy: OverBudgetPolicy = "defer"
) -> tuple[AnalysisService, TokenBudget]:
    budget = TokenBudget(redis, limit)
    return AnalysisService(analyzer, budget, over_budget=policy), budget


async def test_usage_from_the_api_is_what_the_budget_counts(
    fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis
) -> None:
    svc, budget = service(analyzer, redis, 100_000)
    fake_api.script(Reply.success(usage=(700, 80)), Reply.success(usage=(300, 20)))
    first = await svc.analyse("t1", EMAIL)
    second = await svc.analyse("t1", EMAIL)
    assert (first.usage.total, second.usage.total) == (780, 320)
    assert await budget.used("t1") == 1100


@pytest.mark.parametrize(
    ("reply", "charged"),
    [
        (Reply.error(500), "nothing"),
        (Reply.error(429, retry_after="5"), "nothing"),
        (Reply.error(400), "nothing"),
        (Reply.truncated(), "usage"),
        (Reply.success("not json"), "usage"),
    ],
    ids=["500", "429", "400", "max_tokens", "malformed"],
)
async def test_failed_calls_settle_the_budget(
    fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis, reply: Reply, charged: str
) -> None:
    svc, budget = service(analyzer, redis, 100_000)
    fake_api.script(reply)
    with pytest.raises((AnalyzerTransient, AnalyzerPermanent)) as info:
        await svc.analyse("t1", EMAIL)
    used = await budget.used("t1")
    if charged == "nothing":
        assert used == 0
    else:
        assert info.value.usage is not None and used == info.value.usage.total > 0


async def test_a_timeout_keeps_the_estimate_charged(
    fake_api: FakeAnthropic, impatient_analyzer: AnthropicAnalyzer, redis: Redis
) -> None:
    """The request may have been processed without us seeing the usage: err on the side of spending less."""
    svc, budget = service(impatient_analyzer, redis, 100_000)
    fake_api.script(Reply.hang(30))
    with pytest.raises(AnalyzerTransient, match="timed out"):
        await svc.analyse("t1", EMAIL)
    assert await budget.used("t1") == impatient_analyzer.estimate_tokens(EMAIL)


async def test_refusal_falls_back_to_heuristic_and_counts_the_tokens(
    fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis
) -> None:
    svc, budget = service(analyzer, redis, 100_000)
    fake_api.script(Reply.refusal())
    result = await svc.analyse("t1", EMAIL)
    assert result.analysis.analyzer is AnalyzerKind.heuristic
    assert result.analysis.fallback_reason is FallbackReason.refusal
    assert result.analysis.category is HeuristicAnalyzer().analyse_now(EMAIL).category
    assert result.usage.total > 0
    assert await budget.used("t1") == result.usage.total


async def test_refusal_falls_back_without_a_budget_too(fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer) -> None:
    fake_api.script(Reply.refusal())
    result = await AnalysisService(analyzer, None).analyse("t1", EMAIL)
    assert result.analysis.fallback_reason is FallbackReason.refusal


async def test_over_budget_defer_raises_without_calling_the_api(
    fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis
) -> None:
    svc, _ = service(analyzer, redis, analyzer.estimate_tokens(EMAIL) - 1)
    with pytest.raises(OverBudget) as info:
        await svc.analyse("t1", EMAIL)
    assert 0 < info.value.resets_in <= 86400
    assert fake_api.requests == []


async def test_over_budget_heuristic_falls_back_without_calling_the_api(
    fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis
) -> None:
    svc, _ = service(analyzer, redis, 10, policy="heuristic")
    result = await svc.analyse("t1", EMAIL)
    assert result.analysis.analyzer is AnalyzerKind.heuristic
    assert result.analysis.fallback_reason is FallbackReason.over_budget
    assert result.usage.total == 0
    assert fake_api.requests == []


async def test_heuristic_primary_never_touches_the_budget(redis: Redis) -> None:
    svc = AnalysisService(HeuristicAnalyzer(), TokenBudget(redis, 0))
    result = await svc.analyse("t1", EMAIL)
    assert result.analysis.analyzer is AnalyzerKind.heuristic
    assert result.analysis.fallback_reason is None
    assert await redis.keys("*") == []


async def test_factory_follows_settings(redis: Redis) -> None:
    offline = AiConfig.from_settings(Settings())
    assert offline.api_key is None
    assert isinstance(make_analyzer(offline), HeuristicAnalyzer)

    online = AiConfig.from_settings(
        Settings(anthropic_api_key=SecretStr("sk-x"), anthropic_base_url="http://127.0.0.1:9", anthropic_model="m")
    )
    analyzer = make_analyzer(online)
    assert isinstance(analyzer, AnthropicAnalyzer) and analyzer.model == "m"
    await analyzer.aclose()
    svc = AnalysisService.from_config(online, redis)
    assert isinstance(svc.budget, TokenBudget) and svc.budget.limit == online.daily_token_budget
    await svc.aclose()


def test_config_comes_from_settings_and_the_policy_is_checked() -> None:
    settings = Settings(
        anthropic_model=TEST_MODEL,
        ai_daily_token_budget=None,
        ai_over_budget="defer",
        ai_max_input_chars=4000,
        ai_tenant_rate_limit=5,
        ai_tenant_rate_period_s=10,
    )
    config = AiConfig.from_settings(settings)
    assert (config.daily_token_budget, config.over_budget, config.max_input_chars) == (None, "defer", 4000)
    assert config.tenant_rate_limit == (5, 10.0)
    assert config.api_key is None  # no key: the offline analyzer
    with pytest.raises(ValidationError, match="ai_over_budget"):
        Settings(ai_over_budget="spend-anyway")  # type: ignore[arg-type]
