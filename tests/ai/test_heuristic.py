"""The offline analyzer on a varied corpus: right category, sane fields, deterministic, always valid."""

from __future__ import annotations

import itertools

import pytest

from tests.ai.corpus import CORPUS
from worker.ai.heuristic import HEURISTIC_MODEL, HeuristicAnalyzer
from worker.ai.models import (
    ACTION_ITEM_MAX,
    ACTION_ITEMS_MAX,
    SUMMARY_MAX,
    Analysis,
    AnalyzerKind,
    Category,
    EmailInput,
    FallbackReason,
    Sentiment,
    Urgency,
)

heuristic = HeuristicAnalyzer()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_category_on_corpus(name: str) -> None:
    email, expected = CORPUS[name]
    analysis = heuristic.analyse_now(email)
    assert analysis.category is expected, analysis.summary
    assert analysis.analyzer is AnalyzerKind.heuristic
    assert analysis.model == HEURISTIC_MODEL
    assert analysis.fallback_reason is None
    Analysis.model_validate(analysis.model_dump())  # the stored form validates too


def test_every_category_is_reachable() -> None:
    assert {category for _, category in CORPUS.values()} == set(Category)


def test_human_mail_fields() -> None:
    dinner = heuristic.analyse_now(CORPUS["personal-dinner"][0])
    assert dinner.needs_reply is True
    assert dinner.language == "en"
    assert "Let me know by Thursday." in dinner.action_items
    assert "Anna Berg" in dinner.summary and "Dinner on Saturday?" in dinner.summary

    report = heuristic.analyse_now(CORPUS["work-report"][0])
    assert report.action_items == ["Could you review the budget section before the deadline on Friday?"]
    assert all("quoted" not in item for item in report.action_items)  # quoted replies are ignored

    fyi = heuristic.analyse_now(CORPUS["work-es-fyi"][0])
    assert (fyi.language, fyi.needs_reply, fyi.action_items) == ("es", False, [])
    assert heuristic.analyse_now(CORPUS["personal-de"][0]).language == "de"
    assert heuristic.analyse_now(CORPUS["newsletter-fr"][0]).language == "fr"


def test_urgency() -> None:
    assert heuristic.analyse_now(CORPUS["work-urgent"][0]).urgency is Urgency.high
    assert heuristic.analyse_now(CORPUS["work-outage"][0]).urgency is Urgency.high
    assert heuristic.analyse_now(CORPUS["work-report"][0]).urgency is Urgency.normal
    for name in ("newsletter-list", "spam-lottery", "phishing-deceptive-link"):
        assert heuristic.analyse_now(CORPUS[name][0]).urgency is Urgency.low, name
    flagged = EmailInput(from_addr="boss@acme.example", subject="numbers", headers={"x-priority": "1 (Highest)"})
    assert heuristic.analyse_now(flagged).urgency is Urgency.high


def test_sentiment() -> None:
    happy = EmailInput(from_addr="a@gmail.com", text="Congratulations! Great news, I am so happy for you.")
    upset = EmailInput(
        from_addr="a@acme.example", text="Unfortunately the delivery failed again. This is unacceptable."
    )
    assert heuristic.analyse_now(happy).sentiment is Sentiment.positive
    assert heuristic.analyse_now(upset).sentiment is Sentiment.negative
    assert heuristic.analyse_now(CORPUS["work-report"][0]).sentiment is Sentiment.neutral
    assert heuristic.analyse_now(CORPUS["personal-same-domain"][0]).sentiment is Sentiment.positive


def test_phishing_summary_names_the_signals_and_suggests_nothing() -> None:
    analysis = heuristic.analyse_now(CORPUS["phishing-deceptive-link"][0])
    assert "failed SPF" in analysis.summary
    assert "points to 198.51.100.7" in analysis.summary
    assert analysis.action_items == []
    assert analysis.needs_reply is False


def test_prompt_injection_is_flagged_not_obeyed() -> None:
    analysis = heuristic.analyse_now(CORPUS["prompt-injection"][0])
    assert analysis.category is Category.phishing_suspect
    assert analysis.action_items == []
    assert analysis.needs_reply is False


def test_hidden_html_does_not_count() -> None:
    """Spam words inside display:none change nothing: same result as without them."""
    email, _ = CORPUS["html-hidden-spam-words"]
    without = email.model_copy(update={"html": "<p>Here are the notes from the project meeting.</p>"})
    assert heuristic.analyse_now(email) == heuristic.analyse_now(without)


def test_reply_to_mismatch_alone_is_not_phishing() -> None:
    email = EmailInput(
        from_addr="Lea <lea@acme.example>",
        reply_to="lea.private@gmail.com",
        to=["me@acme.example"],
        subject="Project update",
        text="The project is on track.",
    )
    assert heuristic.analyse_now(email).category is Category.work


def test_deterministic() -> None:
    for email, _ in CORPUS.values():
        assert heuristic.analyse_now(email) == heuristic.analyse_now(email)


def test_bounds_hold_on_hostile_input() -> None:
    """Huge subjects, many requests, empty mail, odd headers: always a valid, bounded Analysis."""
    bodies = [
        "",
        "Please do this. " * 500,
        "x" * 100_000,
        "<<<>>> \x00\x01 \u202e reversed",
        "Could you " + "really " * 200 + "help?",
    ]
    subjects = ["", "S" * 5000, "Re: Re: Fwd: ?"]
    senders = ["", "not an address", "A <a@b>", "noreply@x.example"]
    for body, subject, sender in itertools.product(bodies, subjects, senders):
        email = EmailInput(subject=subject, from_addr=sender, text=body, headers={"x-priority": ""})
        analysis = heuristic.analyse_now(email)
        assert 1 <= len(analysis.summary) <= SUMMARY_MAX
        assert len(analysis.action_items) <= ACTION_ITEMS_MAX
        assert all(len(item) <= ACTION_ITEM_MAX for item in analysis.action_items)


async def test_async_interface_costs_nothing() -> None:
    email, _ = CORPUS["work-report"]
    result = await heuristic.analyse(email)
    assert result.usage.total == 0
    assert result.analysis == heuristic.analyse_now(email)
    assert heuristic.estimate_tokens(email) == 0


def test_fallback_reason_is_recorded() -> None:
    email, _ = CORPUS["work-report"]
    marked = heuristic.analyse_now(email, fallback_reason=FallbackReason.over_budget)
    assert marked.fallback_reason is FallbackReason.over_budget
    assert marked.model_dump(exclude={"fallback_reason"}) == heuristic.analyse_now(email).model_dump(
        exclude={"fallback_reason"}
    )
