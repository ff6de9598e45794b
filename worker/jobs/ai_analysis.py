"""ai-analysis: analyse one stored message, once per content identity, within the tenant's token budget.

Failures map onto the runtime: a transient API error with a retry-after becomes RetryLater (capped), one
without goes back to the queue's backoff, a permanent one is dead-lettered, and an exhausted budget
defers the job to the next UTC day (policy 'defer') without consuming an attempt. The job only ever
writes the analysis: nothing in a model's output can make it send, forward or delete mail.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel

from settings import get_settings
from worker.ai.analyzer import AiConfig, AnalysisService
from worker.ai.budget import OverBudget
from worker.ai.models import AnalyzerPermanent, AnalyzerTransient, EmailInput
from worker.jobs.deps import get_store
from worker.mail.message import ParsedMessage
from worker.runtime import Defer, JobContext, PermanentError, RetryLater, job

MIDNIGHT_SPREAD_S = 300.0  # deferred jobs of many tenants do not all wake at 00:00:00


class AnalyseMessage(BaseModel):
    """Payload: which stored message of which tenant (IDs only)."""

    tenant_id: str
    message_id: str


def email_input(parsed: ParsedMessage) -> EmailInput:
    """What the analyzers see of a stored message."""
    return EmailInput(
        subject=parsed.subject,
        from_addr=parsed.from_,
        to=parsed.to + parsed.cc,
        reply_to=parsed.headers.get("reply-to", ""),
        headers=parsed.headers,
        text=parsed.text,
        html=parsed.html,
    )


def _service(ctx: JobContext) -> tuple[AnalysisService, AiConfig]:
    """The worker's analysis service, built once per process from its settings."""
    service, config = ctx.state.get("ai_service"), ctx.state.get("ai_config")
    if not isinstance(service, AnalysisService) or not isinstance(config, AiConfig):
        config = AiConfig.from_settings(ctx.settings)
        service = AnalysisService.from_config(config, ctx.redis)
        ctx.state["ai_service"], ctx.state["ai_config"] = service, config  # the service is closed at stop
    return service, config


@job(
    queue="ai-analysis",
    payload=AnalyseMessage,
    idempotency_key=lambda p: f"analyse:{p.tenant_id}:{p.message_id}",
    rate_limit=AiConfig.from_settings(get_settings()).tenant_rate_limit,
    rate_limit_key=lambda p: str(p.tenant_id),
    group=lambda p: str(p.tenant_id),
)
async def analyse_message(ctx: JobContext, payload: AnalyseMessage) -> dict[str, Any]:
    """Analyse the message and store the result under its content id (skipped when already stored)."""
    store = get_store(ctx)
    message = await store.get_message(payload.tenant_id, payload.message_id)
    if message is None:
        raise PermanentError(f"message {payload.message_id} of tenant {payload.tenant_id} not found")
    content_id = message.content_id
    existing = await store.get_analysis(payload.tenant_id, content_id)
    if existing is not None:  # re-synced or duplicated mail is analysed once
        return {"content_id": content_id, "stored": False, "analyzer": existing.get("analyzer")}

    service, config = _service(ctx)
    try:
        result = await service.analyse(payload.tenant_id, email_input(message.parsed))
    except OverBudget as exc:
        raise Defer(str(exc), delay=exc.resets_in + random.uniform(0, MIDNIGHT_SPREAD_S)) from exc
    except AnalyzerTransient as exc:
        if exc.retry_after is None:
            raise  # the queue's exponential backoff
        raise RetryLater(str(exc), delay=min(exc.retry_after, config.retry_after_cap)) from exc
    except AnalyzerPermanent as exc:
        raise PermanentError(str(exc)) from exc

    data = result.analysis.model_dump(mode="json")
    stored = await store.put_analysis(payload.tenant_id, content_id, data)
    return {
        "content_id": content_id,
        "stored": stored,
        **{k: data[k] for k in ("analyzer", "model", "fallback_reason", "category")},
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
    }
