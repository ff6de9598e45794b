"""A deterministic, offline analyzer: headers, keywords, list headers and links -> the same `Analysis`.

Used when no API key is configured (the demo default), when a tenant is over its token budget (if so
configured) and when the model refuses. Results are marked `analyzer="heuristic"`.
"""

from __future__ import annotations

import re
from email.utils import getaddresses, parseaddr
from urllib.parse import urlsplit

from worker.ai.models import (
    ACTION_ITEM_MAX,
    ACTION_ITEMS_MAX,
    SUMMARY_MAX,
    Analysis,
    AnalyzerKind,
    AnalyzerResult,
    Category,
    EmailInput,
    FallbackReason,
    Sentiment,
    TokenUsage,
    Urgency,
)
from worker.ai.text import Link, cap_text, collapse_whitespace, email_body

HEURISTIC_MODEL = "heuristic-v1"
_BODY_CHARS = 20_000  # enough to classify; bounds the regex work per message

_FREE_MAIL = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "outlook.com", "hotmail.com", "live.com",
        "msn.com", "icloud.com", "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.de", "gmx.net",
        "web.de", "mail.ru", "yandex.ru", "fastmail.com", "zoho.com",
    }
)  # fmt: skip
_AUTOMATED_SENDER = re.compile(
    r"^(?:no-?reply|do-?not-?reply|notifications?|notify|alerts?|mailer-daemon|postmaster|bounces?|news"
    r"|newsletters?|updates?|billing|receipts?|orders?|shipping|accounts?|security|team|hello|info|marketing)"
    r"(?:[+._-].*)?$",
    re.IGNORECASE,
)


def _words(*phrases: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE)


_PHISHING_LURE = _words(
    r"account (?:has been |was |will be )?(?:suspended|locked|disabled|limited|closed)",
    r"verify your (?:account|identity)",
    r"confirm your (?:password|identity|billing|payment|account)",
    r"unusual (?:sign-?in|login) (?:activity|attempt)",
    r"update your (?:payment|billing) (?:details|information|method)",
    r"(?:log|sign) ?in (?:now |immediately )?to (?:restore|unlock|reactivate)",
    r"your password (?:expires|will expire)",
)
_INJECTION = _words(
    r"ignore (?:all |any )?(?:previous|prior|above) (?:instructions|prompts?)",
    r"disregard (?:all |any )?(?:previous|prior|your) instructions",
    r"you are now (?:a|an|the)",
    r"system prompt",
    r"as an (?:ai|llm|assistant)",
    r"(?:ai|llm) assistant[,:]",
)
_SPAM = _words(
    r"you (?:have|'ve) won",
    r"lottery",
    r"claim your (?:prize|reward)",
    r"viagra",
    r"casino",
    r"100% free",
    r"risk-free",
    r"act now",
    r"limited time offer",
    r"million (?:dollars|usd)",
    r"inheritance",
    r"dear (?:friend|beneficiary)",
    r"work from home",
    r"miracle",
    r"double your (?:money|bitcoin)",
    r"crypto giveaway",
    r"no credit check",
)
_TRANSACTIONAL = _words(
    r"receipt",
    r"invoice",
    r"order (?:#|no\.?|number|confirmation|confirmed)",
    r"your order",
    r"has (?:been )?shipped",
    r"tracking number",
    r"out for delivery",
    r"payment (?:received|confirmation|confirmed|failed|due)",
    r"(?:booking|reservation) (?:confirmation|confirmed)",
    r"password reset",
    r"reset your password",
    r"verification code",
    r"one-time (?:code|password)",
    r"your code is",
    r"statement is (?:ready|available)",
    r"subscription (?:renewed|renewal)",
    r"refund",
)
_NOTIFICATION = _words(
    r"mentioned you",
    r"commented on",
    r"assigned (?:you|to you)",
    r"new comment",
    r"invited you",
    r"reminder",
    r"notification",
    r"security alert",
    r"new sign-?in",
    r"pull request",
    r"build (?:failed|passed|succeeded)",
    r"has shared",
    r"event (?:updated|cancelled|canceled)",
    r"invitation:",
)
_NEWSLETTER = _words(
    r"unsubscribe",
    r"newsletter",
    r"weekly digest",
    r"this week in",
    r"view (?:it |this email )?in (?:your|a) browser",
    r"% off",
    r"sale ends",
    r"new arrivals",
)
_WORK = _words(
    r"meeting",
    r"project",
    r"deadline",
    r"report",
    r"quarterly",
    r"client",
    r"agenda",
    r"proposal",
    r"contract",
    r"sprint",
    r"deploy(?:ment)?",
    r"release",
    r"roadmap",
    r"budget",
    r"presentation",
    r"stakeholders?",
    r"standup",
    r"onboarding",
    r"q[1-4]",
)
_PERSONAL = _words(
    r"mum",
    r"mom",
    r"dad",
    r"birthday",
    r"dinner",
    r"weekend",
    r"family",
    r"holiday",
    r"vacation",
    r"wedding",
    r"love",
    r"miss you",
    r"kids",
    r"party",
    r"lovely",
    r"see you soon",
    r"hugs",
    r"xoxo",
)
_URGENT = _words(
    r"urgent(?:ly)?",
    r"asap",
    r"immediately",
    r"right away",
    r"as soon as possible",
    r"by (?:eod|end of (?:the )?day|today|tonight)",
    r"overdue",
    r"final notice",
    r"action required",
    r"time[- ]sensitive",
    r"within 24 hours",
    r"outage",
    r"(?:is|are|went) down",
    r"emergency",
    r"critical",
)
_REQUEST = _words(
    r"please",
    r"could you",
    r"can you",
    r"would you",
    r"let me know",
    r"kindly",
    r"make sure",
    r"don't forget",
    r"remember to",
    r"i need you to",
    r"are you (?:free|available)",
)
_POSITIVE = _words(
    r"thank(?:s| you) (?:a lot|so much|very much)",
    r"lovely",
    r"great",
    r"glad",
    r"happy",
    r"congratulations",
    r"congrats",
    r"appreciate",
    r"excellent",
    r"wonderful",
    r"delighted",
    r"excited",
    r"well done",
    r"awesome",
    r"love",
)
_NEGATIVE = _words(
    r"sorry",
    r"unfortunately",
    r"problem",
    r"failed",
    r"failure",
    r"complaint",
    r"disappointed",
    r"angry",
    r"frustrat\w*",
    r"unacceptable",
    r"broken",
    r"delay(?:ed)?",
    r"overdue",
    r"regret",
    r"suspended",
    r"error",
)


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _wordset("the and you that have for with this are your not but will from"),
    "de": _wordset("der die das und ich nicht mit ist ein eine sie wir für auf den zu"),
    "fr": _wordset("le la les et vous est pas pour une des que dans nous avec sur"),
    "es": _wordset("el la los las y que por para una con del es su está como"),
    "it": _wordset("il la che di per una non sono con gli del della è questo"),
    "nl": _wordset("de het een en van ik niet met voor zijn op dat je wij"),
    "pt": _wordset("o a os que de não para com uma por você está do da"),
}
_DOMAIN_IN_TEXT = re.compile(r"(?:https?://)?((?:[a-z0-9-]+\.)+[a-z]{2,})(?:[/:?#]|$)", re.IGNORECASE)
_IP_HOST = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_AUTH_FAIL = re.compile(r"\b(spf|dkim|dmarc)=(fail|softfail|permerror)\b", re.IGNORECASE)


def _site(host: str) -> str:
    """Registrable part of a host name, approximated by its last two labels (three for e.g. co.uk)."""
    labels = host.lower().strip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in {"co", "com", "org", "net", "ac", "gov"}:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _auto_submitted(email: EmailInput) -> bool:
    return email.header("auto-submitted").strip().lower() not in {"", "no"}


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2].lower()


def _visible_body(email: EmailInput) -> tuple[str, list[Link]]:
    """Visible text without quoted replies, and its links."""
    visible = email_body(email)
    lines = cap_text(visible.text, _BODY_CHARS).splitlines()
    unquoted = [line for line in lines if not line.lstrip().startswith(">")]
    return "\n".join(unquoted).strip(), visible.links


def _phishing_reasons(email: EmailInput, body: str, links: list[Link]) -> list[str]:
    reasons: list[str] = []
    auth = _AUTH_FAIL.findall(email.header("authentication-results"))
    if auth:
        reasons.append("failed " + "/".join(sorted({method.upper() for method, _ in auth})))
    for link in links:
        host = urlsplit(link.href).hostname or ""
        shown = _DOMAIN_IN_TEXT.search(link.text.strip())
        if host and shown and _site(shown.group(1)) != _site(host):
            reasons.append(f"link text shows {shown.group(1)} but points to {host}")
            break
    if any(_IP_HOST.match(urlsplit(link.href).hostname or "") for link in links):
        reasons.append("link to a bare IP address")
    lure = _PHISHING_LURE.search(f"{email.subject}\n{body}")
    if lure:
        reasons.append(f'credential lure "{lure.group(0)}"')
    injection = _INJECTION.search(f"{email.subject}\n{body}")
    if injection:
        reasons.append(f'instructions aimed at an AI ("{injection.group(0)}")')
    reply_to = _domain(email.reply_to)
    if reply_to and reply_to != _domain(email.from_addr):
        reasons.append(f"replies go to {reply_to}")
    return reasons


def _is_phishing(reasons: list[str], *, urgent: bool) -> bool:
    """Two independent signals, a lure pressed with urgency, or text that tries to steer an AI."""
    lure = any(r.startswith("credential lure") for r in reasons)
    injection = any(r.startswith("instructions aimed at an AI") for r in reasons)
    return len(reasons) >= 2 or (lure and urgent) or injection


def _category(email: EmailInput, body: str, automated: bool) -> Category:
    spam_flag = email.header("x-spam-flag").strip().lower() == "yes"
    spam_status = email.header("x-spam-status").strip().lower().startswith("yes")
    subject_caps = len(email.subject) > 10 and email.subject.isupper()
    spam_score = len(_SPAM.findall(f"{email.subject}\n{body}")) + subject_caps + ("!!!" in body)
    if spam_flag or spam_status or spam_score >= 2:
        return Category.spam

    listed = bool(email.header("list-unsubscribe") or email.header("list-id"))
    bulk = email.header("precedence").strip().lower() in {"bulk", "list", "junk"}
    notifier = _auto_submitted(email) or bool(email.header("x-github-reason"))

    def hits(pattern: re.Pattern[str]) -> int:
        return 2 * len(pattern.findall(email.subject)) + len(pattern.findall(body))

    scores = {
        Category.transactional: hits(_TRANSACTIONAL),
        Category.notification: hits(_NOTIFICATION) + 2 * notifier,
        Category.newsletter: 2 * (listed or bulk) + min(len(_NEWSLETTER.findall(body)), 2),
    }
    best = max(scores, key=lambda c: scores[c])  # ties: the order above
    if scores[best] >= 2 or (automated and scores[best] >= 1):
        return best
    if automated:
        return Category.notification

    sender = _domain(email.from_addr)
    recipients = {addr.rpartition("@")[2].lower() for _, addr in getaddresses(email.to)}
    same_org = sender not in _FREE_MAIL and sender in recipients
    work = len(_WORK.findall(f"{email.subject}\n{body}")) + same_org
    personal = len(_PERSONAL.findall(f"{email.subject}\n{body}")) + (sender in _FREE_MAIL)
    if work > personal or (work == personal and sender not in _FREE_MAIL):
        return Category.work
    return Category.personal


def _urgency(email: EmailInput, body: str, category: Category) -> Urgency:
    if category in {Category.spam, Category.phishing_suspect, Category.newsletter}:
        return Urgency.low
    flagged = (
        email.header("importance").strip().lower() == "high"
        or email.header("x-priority").strip()[:1] in {"1", "2"}
        or email.header("priority").strip().lower() == "urgent"
    )
    if flagged or _URGENT.search(email.subject) or len(_URGENT.findall(body)) >= 2:
        return Urgency.high
    if category in {Category.work, Category.personal} or _URGENT.search(body):
        return Urgency.normal
    return Urgency.low


def _sentiment(body: str) -> Sentiment:
    score = len(_POSITIVE.findall(body)) - len(_NEGATIVE.findall(body))
    if score >= 2:
        return Sentiment.positive
    if score <= -2:
        return Sentiment.negative
    return Sentiment.neutral


def _language(email: EmailInput, body: str) -> str:
    declared = email.header("content-language").strip().lower()[:2]
    if len(declared) == 2 and declared.isalpha():
        return declared
    words = re.findall(r"[^\W\d_]+", body.lower())[:2000]
    counts = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    (top, top_count), (_, second_count) = ranked[0], ranked[1]
    return top if top_count >= 3 and top_count > second_count else "und"


def _action_items(body: str) -> list[str]:
    items: list[str] = []
    for sentence in _SENTENCE.split(body):
        sentence = sentence.strip()
        if sentence and _REQUEST.search(sentence) and sentence not in items:
            items.append(cap_text(sentence, ACTION_ITEM_MAX))
        if len(items) == ACTION_ITEMS_MAX:
            break
    return items


def _summary(email: EmailInput, body: str, category: Category, reasons: list[str]) -> str:
    name, addr = parseaddr(email.from_addr)
    sender = name or addr or "unknown sender"
    subject = collapse_whitespace(email.subject) or "(no subject)"
    label = category.value.replace("-", " ").capitalize()
    if category is Category.phishing_suspect:
        detail = "Signals: " + "; ".join(reasons) + "."
    else:
        detail = next((s.strip() for s in _SENTENCE.split(body) if len(s.split()) >= 4), "")
    return cap_text(f'{label} mail from {sender}: "{subject}". {detail}'.strip(), SUMMARY_MAX)


class HeuristicAnalyzer:
    """Rules over headers, keywords and links; same input, same output."""

    kind = AnalyzerKind.heuristic
    model = HEURISTIC_MODEL

    def analyse_now(self, email: EmailInput, fallback_reason: FallbackReason | None = None) -> Analysis:
        """The analysis of one message (synchronous; no I/O)."""
        body, links = _visible_body(email)
        local_part = parseaddr(email.from_addr)[1].partition("@")[0]
        automated = _auto_submitted(email) or bool(_AUTOMATED_SENDER.match(local_part))
        reasons = _phishing_reasons(email, body, links)
        if _is_phishing(reasons, urgent=bool(_URGENT.search(f"{email.subject}\n{body}"))):
            category = Category.phishing_suspect
        else:
            category = _category(email, body, automated)
        human = category in {Category.work, Category.personal}
        actions = _action_items(body) if human or category is Category.transactional else []
        return Analysis(
            category=category,
            urgency=_urgency(email, body, category),
            summary=_summary(email, body, category, reasons),
            action_items=actions,
            sentiment=_sentiment(body),
            language=_language(email, body),
            needs_reply=human and not automated and ("?" in body or bool(_REQUEST.search(body))),
            analyzer=AnalyzerKind.heuristic,
            model=HEURISTIC_MODEL,
            fallback_reason=fallback_reason,
        )

    async def analyse(self, email: EmailInput) -> AnalyzerResult:
        """`analyse_now` behind the async analyzer interface; costs no tokens."""
        return AnalyzerResult(self.analyse_now(email), TokenUsage())

    def estimate_tokens(self, email: EmailInput) -> int:
        """Always 0: nothing is billed."""
        return 0

    async def aclose(self) -> None:
        """Nothing to release."""
