"""The analyzer interface, the choice between Anthropic and the heuristic, and budgeted analysis.

`AnalysisService.analyse` is what a job calls: it reserves tokens, calls the configured analyzer, settles
the budget with the real usage and falls back to the heuristic analyzer when so configured (over budget)
or when the model refuses. Knows nothing about queues: failures surface as AnalyzerTransient,
AnalyzerPermanent and OverBudget for the caller to map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from redis.asyncio import Redis

from settings import Settings
from worker.ai.budget import OverBudget, TokenBudget
from worker.ai.heuristic import HeuristicAnalyzer
from worker.ai.models import (
    AnalyzerError,
    AnalyzerKind,
    AnalyzerRefused,
    AnalyzerResult,
    EmailInput,
    FallbackReason,
    TokenUsage,
)

OverBudgetPolicy = Literal["defer", "heuristic"]


class Analyzer(Protocol):
    """Turns one email into an Analysis."""

    @property
    def kind(self) -> AnalyzerKind: ...

    async def analyse(self, email: EmailInput) -> AnalyzerResult:
        """The analysis and the tokens it cost; raises AnalyzerTransient / AnalyzerPermanent."""
        ...

    def estimate_tokens(self, email: EmailInput) -> int:
        """An upper estimate of the tokens `analyse` will bill (0 when nothing is billed)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class AiConfig:
    """The ai-analysis knobs, read from settings with defaults for the ones settings may not have yet."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "claude-haiku-4-5"
    timeout: float = 30.0
    max_tokens: int = 1024
    max_input_chars: int = 12_000
    daily_token_budget: int | None = 200_000
    over_budget: OverBudgetPolicy = "heuristic"
    retry_after_cap: float = 300.0
    tenant_rate_limit: tuple[int, float] = (60, 60.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> AiConfig:
        """The analysis configuration from anthropic_* and ai_* settings."""
        key = settings.anthropic_api_key
        return cls(
            api_key=(key.get_secret_value() if key else None) or None,
            base_url=settings.anthropic_base_url,
            model=settings.anthropic_model,
            timeout=settings.ai_request_timeout_s,
            max_tokens=settings.ai_max_output_tokens,
            max_input_chars=settings.ai_max_input_chars,
            daily_token_budget=settings.ai_daily_token_budget,
            over_budget=settings.ai_over_budget,
            retry_after_cap=settings.ai_retry_after_cap_s,
            tenant_rate_limit=(settings.ai_tenant_rate_limit, settings.ai_tenant_rate_period_s),
        )


def make_analyzer(config: AiConfig) -> Analyzer:
    """Anthropic when an API key is configured, else the offline heuristic analyzer."""
    if not config.api_key:
        return HeuristicAnalyzer()
    from worker.ai.anthropic import AnthropicAnalyzer  # the SDK is slow to import: only when a key is set

    return AnthropicAnalyzer(
        api_key=config.api_key,
        model=config.model,
        base_url=config.base_url,
        timeout=config.timeout,
        max_tokens=config.max_tokens,
        max_input_chars=config.max_input_chars,
    )


class AnalysisService:
    """Budgeted analysis for one tenant's message; `budget=None` means unlimited."""

    def __init__(
        self, analyzer: Analyzer, budget: TokenBudget | None, *, over_budget: OverBudgetPolicy = "heuristic"
    ) -> None:
        self.analyzer = analyzer
        self.budget = budget
        self.over_budget = over_budget
        self.heuristic = HeuristicAnalyzer()

    @classmethod
    def from_config(cls, config: AiConfig, redis: Redis) -> AnalysisService:
        budget = None if config.daily_token_budget is None else TokenBudget(redis, config.daily_token_budget)
        return cls(make_analyzer(config), budget, over_budget=config.over_budget)

    async def analyse(self, tenant_id: str, email: EmailInput) -> AnalyzerResult:
        """Analyse within the tenant's budget; raises OverBudget (policy 'defer'), AnalyzerTransient or
        AnalyzerPermanent."""
        if self.analyzer.kind is AnalyzerKind.heuristic:
            return await self.analyzer.analyse(email)
        estimate = self.analyzer.estimate_tokens(email)
        reservation = None
        if self.budget is not None:
            try:
                reservation = await self.budget.reserve(tenant_id, estimate)
            except OverBudget:
                if self.over_budget == "heuristic":
                    return self._fallback(email, FallbackReason.over_budget, None)
                raise
        try:
            result = await self.analyzer.analyse(email)
        except AnalyzerError as exc:
            if self.budget is not None and reservation is not None:
                billed = exc.usage.total if exc.usage else (estimate if exc.maybe_billed else 0)
                await self.budget.settle(reservation, billed)
            if isinstance(exc, AnalyzerRefused):
                return self._fallback(email, FallbackReason.refusal, exc)
            raise
        if self.budget is not None and reservation is not None:
            await self.budget.settle(reservation, result.usage.total)
        return result

    def _fallback(self, email: EmailInput, reason: FallbackReason, exc: AnalyzerError | None) -> AnalyzerResult:
        """The heuristic analysis marked with why it ran; usage is what a refused call still billed."""
        analysis = self.heuristic.analyse_now(email, fallback_reason=reason)
        return AnalyzerResult(analysis, exc.usage if exc and exc.usage else TokenUsage())

    async def aclose(self) -> None:
        """Release the analyzer's HTTP connections."""
        await self.analyzer.aclose()
