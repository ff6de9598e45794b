"""Untrusted HTML -> the text a reader actually sees, plus the links in it; length caps.

Hidden text is a common way to smuggle instructions or keywords past a reader, so anything a mail client
would not render is dropped: script/style/head/template, comments, `hidden`, `aria-hidden="true"`,
`display:none`, `visibility:hidden`, zero font-size or opacity, zero height/width with `overflow:hidden`.
Not detected: hiding through <style> rules or text coloured like its background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from worker.ai.models import EmailInput

_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript", "svg", "math", "object"})
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "form", "h1",
        "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
        "table", "td", "th", "tr", "ul",
    }
)  # fmt: skip
_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.IGNORECASE)
_ZERO = r"\s*:\s*0(?:\.0+)?(?:px|pt|em|rem|%)?\s*(?:!important\s*)?(?:;|$)"
_HIDDEN_STYLE = re.compile(
    rf"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse)|font-size{_ZERO}|opacity{_ZERO})",
    re.IGNORECASE,
)
_ZERO_BOX = re.compile(rf"(?:^|;)\s*(?:max-)?(?:height|width){_ZERO}", re.IGNORECASE)
_OVERFLOW_HIDDEN = re.compile(r"(?:^|;)\s*overflow\s*:\s*hidden", re.IGNORECASE)
TRUNCATION_MARK = "\n[... truncated]"


@dataclass(frozen=True)
class Link:
    """A visible link: where it goes and what it says."""

    href: str
    text: str


@dataclass
class VisibleText:
    """The rendered text of an HTML body and its visible links."""

    text: str
    links: list[Link] = field(default_factory=list)


def _is_hidden(tag: str, attrs: dict[str, str | None]) -> bool:
    if tag in _SKIP_TAGS or "hidden" in attrs:
        return True
    if (attrs.get("aria-hidden") or "").strip().lower() == "true":
        return True
    if tag == "input" and (attrs.get("type") or "").lower() == "hidden":
        return True
    style = attrs.get("style") or ""
    return bool(_HIDDEN_STYLE.search(style) or (_ZERO_BOX.search(style) and _OVERFLOW_HIDDEN.search(style)))


class _Renderer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[Link] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, hidden) of open elements
        self._hidden_depth = 0
        self._anchor: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr_map = {k.lower(): v for k, v in attrs}
        hidden = _is_hidden(tag, attr_map)
        if tag in _VOID_TAGS:
            if not hidden and not self._hidden_depth:
                if tag in _BLOCK_TAGS:
                    self.parts.append("\n")
                elif tag == "img" and attr_map.get("alt"):
                    self._text(f" {attr_map['alt']} ")
            return
        self._stack.append((tag, hidden))
        self._hidden_depth += hidden
        if self._hidden_depth:
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "a" and attr_map.get("href"):
            self._anchor = (attr_map["href"] or "", [])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # as browsers do: `<div/>` opens a div

    def handle_endtag(self, tag: str) -> None:
        if not any(open_tag == tag for open_tag, _ in self._stack):
            return  # stray end tag
        while self._stack:
            open_tag, hidden = self._stack.pop()
            self._hidden_depth -= hidden
            if open_tag == tag:
                break
        if self._hidden_depth:
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "a" and self._anchor is not None:
            href, words = self._anchor
            self.links.append(Link(href=href.strip(), text=collapse_whitespace(" ".join(words))))
            self._anchor = None

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self._text(data)

    def _text(self, data: str) -> None:
        self.parts.append(data)
        if self._anchor is not None:
            self._anchor[1].append(data)


def collapse_whitespace(text: str) -> str:
    """Runs of spaces/tabs -> one space; at most one blank line in a row; trimmed lines."""
    lines = [re.sub(r"[ \t\f\v\u00a0\u200b]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_visible(html: str) -> VisibleText:
    """Render HTML to what a reader sees (hidden elements and comments dropped) and its visible links."""
    renderer = _Renderer()
    renderer.feed(html)
    renderer.close()
    return VisibleText(text=collapse_whitespace("".join(renderer.parts)), links=renderer.links)


def cap_text(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters (marked when cut), preferring a word boundary."""
    if len(text) <= max_chars:
        return text
    keep = max(0, max_chars - len(TRUNCATION_MARK))
    cut = text[:keep]
    space = cut.rfind(" ", keep - 40 if keep > 40 else 0)
    if space > 0:
        cut = cut[:space]
    return cut.rstrip() + TRUNCATION_MARK


def email_body(email: EmailInput) -> VisibleText:
    """What the reader sees: the HTML part rendered when there is one (it is what mail clients show and
    may differ from the text part), else the text part; links include bare URLs in the text."""
    if email.html:
        visible = html_to_visible(email.html)
        text, links = visible.text or collapse_whitespace(email.text), visible.links
    else:
        text, links = collapse_whitespace(email.text), []
    links = links + [Link(href=url, text="") for url in _URL.findall(text)]
    return VisibleText(text=text, links=links)
