"""Closing figures: tokens and latency per analysed message against the fake, and the budget at its limit.

    pytest tests/ai/test_figures.py -s -q -p no:cacheprovider

Prints the tables; asserts only invariants (never speed). The fake counts one token per 4 characters,
so token figures show the prompt's size, not what the real tokenizer will bill.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from redis.asyncio import Redis

from tests.ai.corpus import CORPUS
from tests.support.fake_anthropic import FakeAnthropic
from worker.ai.analyzer import AnalysisService
from worker.ai.anthropic import AnthropicAnalyzer
from worker.ai.budget import OverBudget, TokenBudget
from worker.ai.models import AnalyzerKind, FallbackReason

ROUNDS = 5


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"mean {statistics.mean(values):8.1f}  median {statistics.median(values):8.1f}  p95 {p95:8.1f}"


async def test_tokens_and_latency_per_message(
    fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis
) -> None:
    budget = TokenBudget(redis, 10_000_000)
    service = AnalysisService(analyzer, budget)
    rows: list[tuple[str, int, int, int, float]] = []
    for _ in range(ROUNDS):
        for name, (email, _) in CORPUS.items():
            started = time.perf_counter()
            result = await service.analyse("t1", email)
            elapsed_ms = (time.perf_counter() - started) * 1000
            rows.append((name, result.usage.input_tokens, result.usage.output_tokens, 0, elapsed_ms))
            assert result.analysis.analyzer is AnalyzerKind.anthropic
    estimates = {name: analyzer.estimate_tokens(email) for name, (email, _) in CORPUS.items()}

    print(f"\n\nper analysed message, fake Messages API on loopback ({len(rows)} calls, {ROUNDS} rounds)")
    print(f"{'message':28} {'in':>6} {'out':>5} {'estimate':>9} {'latency ms':>11}")
    for name, tokens_in, tokens_out, _, _ in rows[: len(CORPUS)]:
        latencies = [r[4] for r in rows if r[0] == name]
        print(f"{name:28} {tokens_in:6} {tokens_out:5} {estimates[name]:9} {statistics.median(latencies):11.1f}")
    print(f"input tokens   {_stats([float(r[1]) for r in rows])}")
    print(f"output tokens  {_stats([float(r[2]) for r in rows])}")
    print(f"latency ms     {_stats([r[4] for r in rows])}  (SDK + loopback HTTP + Redis budget, fake answers at once)")

    assert await budget.used("t1") == sum(r[1] + r[2] for r in rows)  # counted from the API's usage figures
    assert all(r[1] + r[2] <= estimates[r[0]] for r in rows)  # reservations are upper bounds


async def test_budget_at_its_limit(fake_api: FakeAnthropic, analyzer: AnthropicAnalyzer, redis: Redis) -> None:
    email, _ = CORPUS["work-report"]
    estimate = analyzer.estimate_tokens(email)
    limit = 10 * estimate

    budget = TokenBudget(redis, limit)
    service = AnalysisService(analyzer, budget, over_budget="defer")
    analysed, refused = 0, None
    while refused is None:
        try:
            await service.analyse("t1", email)
            analysed += 1
        except OverBudget as exc:
            refused = exc
    used = await budget.used("t1")
    per_call = used / analysed
    print(f"\n\nbudget at its limit (policy defer): limit {limit}, estimate per call {estimate}")
    print(f"  sequential: {analysed} calls analysed, {used} tokens used ({per_call:.0f}/call), headroom {limit - used}")
    print(f"  refused when used + estimate > limit: {refused.used} + {refused.estimate} > {refused.limit}")
    print(f"  deferred for {refused.resets_in:.0f}s (to 00:00 UTC); API calls made: {len(fake_api.requests)}")
    assert used <= limit
    assert refused.used + refused.estimate > limit
    assert len(fake_api.requests) == analysed  # the refused call never reached the API

    await redis.flushall()
    fake_api.requests.clear()
    fallback = AnalysisService(analyzer, TokenBudget(redis, limit), over_budget="heuristic")
    outcomes = await asyncio.gather(*(fallback.analyse("t1", email) for _ in range(40)))
    by_model = [o for o in outcomes if o.analysis.analyzer is AnalyzerKind.anthropic]
    by_rules = [o for o in outcomes if o.analysis.fallback_reason is FallbackReason.over_budget]
    used = await TokenBudget(redis, limit).used("t1")
    print(f"  40 concurrent calls (policy heuristic): {len(by_model)} by the model, {len(by_rules)} heuristic")
    print(f"  tokens used {used} of {limit}; API calls made: {len(fake_api.requests)}")
    assert len(by_model) + len(by_rules) == 40
    assert len(fake_api.requests) == len(by_model)
    assert used <= limit
    # estimates are reserved before the calls settle, so concurrency admits at most limit // estimate calls
    assert len(by_model) == limit // estimate
