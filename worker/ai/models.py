"""The analysis result, its input and the errors every analyzer raises.

`Analysis` is what the store keeps for one message (by content identity). `ModelOutput` is the part a
language model fills; the analyzer adds who produced it. Both are validated on every result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SUMMARY_MAX = 300
ACTION_ITEMS_MAX = 5
ACTION_ITEM_MAX = 160


class Category(StrEnum):
    """What kind of mail this is."""

    personal = "personal"
    work = "work"
    newsletter = "newsletter"
    transactional = "transactional"
    notification = "notification"
    spam = "spam"
    phishing_suspect = "phishing-suspect"


class Urgency(StrEnum):
    """How soon the recipient should look at it."""

    low = "low"
    normal = "normal"
    high = "high"


class Sentiment(StrEnum):
    """Tone of the message."""

    positive = "positive"
    neutral = "neutral"
    negative = "negative"


class AnalyzerKind(StrEnum):
    """Which analyzer produced a result."""

    anthropic = "anthropic"
    heuristic = "heuristic"


class FallbackReason(StrEnum):
    """Why the heuristic analyzer ran although a model is configured."""

    over_budget = "over_budget"
    refusal = "refusal"


Summary = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=SUMMARY_MAX)]
ActionItem = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ACTION_ITEM_MAX)]
Language = Annotated[str, StringConstraints(pattern=r"^([a-z]{2}|und)$")]


class ModelOutput(BaseModel):
    """The fields an analyzer decides; its JSON schema is the structured-output contract."""

    model_config = ConfigDict(extra="forbid")

    category: Category
    urgency: Urgency
    summary: Summary = Field(description="One or two neutral sentences describing the email.")
    action_items: list[ActionItem] = Field(
        max_length=ACTION_ITEMS_MAX, description="Things the recipient may want to do; empty if none."
    )
    sentiment: Sentiment
    language: Language = Field(description="ISO 639-1 code of the email's language, or 'und'.")
    needs_reply: bool = Field(description="True when a human sender expects an answer.")


class Analysis(ModelOutput):
    """One stored analysis: the decided fields plus who produced them."""

    analyzer: AnalyzerKind
    model: str = Field(min_length=1, max_length=100)
    fallback_reason: FallbackReason | None = None


class EmailInput(BaseModel):
    """What an analyzer sees of one message (untrusted content)."""

    model_config = ConfigDict(frozen=True)

    subject: str = ""
    from_addr: str = ""
    to: list[str] = Field(default_factory=list)
    reply_to: str = ""
    headers: dict[str, str] = Field(default_factory=dict, description="lower-cased names")
    text: str = ""
    html: str = ""

    def header(self, name: str) -> str:
        """A header's value ('' when absent), by case-insensitive name."""
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True)
class TokenUsage:
    """Tokens billed for one call, from the API's usage figures."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class AnalyzerResult:
    """An analysis and what it cost."""

    analysis: Analysis
    usage: TokenUsage


class AnalyzerError(Exception):
    """An analyzer could not produce a result.

    `usage` is set when the API reported billed tokens anyway; `maybe_billed` when the request may have been
    processed without us seeing the figures (a timeout after sending), so a budget keeps its estimate.
    """

    def __init__(self, message: str, *, usage: TokenUsage | None = None, maybe_billed: bool = False) -> None:
        super().__init__(message)
        self.usage = usage
        self.maybe_billed = maybe_billed


class AnalyzerTransient(AnalyzerError):
    """Worth retrying later; `retry_after` is the server's wish in seconds (uncapped), if it said one."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        usage: TokenUsage | None = None,
        maybe_billed: bool = False,
    ) -> None:
        super().__init__(message, usage=usage, maybe_billed=maybe_billed)
        self.retry_after = retry_after


class AnalyzerPermanent(AnalyzerError):
    """Retrying the same input will not help (bad request, auth, unusable output)."""


class AnalyzerRefused(AnalyzerPermanent):
    """The model declined to analyse this message."""
