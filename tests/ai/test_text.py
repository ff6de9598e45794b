"""HTML -> visible text: hidden content never survives, visible content always does."""

from __future__ import annotations

import pytest

from worker.ai.models import EmailInput
from worker.ai.text import TRUNCATION_MARK, Link, cap_text, collapse_whitespace, email_body, html_to_visible

HIDDEN = [
    '<div style="display:none">SECRET</div>',
    '<div style="DISPLAY : NONE !important">SECRET</div>',
    '<span style="color:red; visibility:hidden">SECRET</span>',
    '<span style="font-size:0">SECRET</span>',
    '<span style="font-size: 0px;">SECRET</span>',
    '<span style="opacity:0">SECRET</span>',
    '<div style="max-height:0; overflow:hidden">SECRET</div>',
    "<p hidden>SECRET</p>",
    '<p aria-hidden="true">SECRET</p>',
    "<script>var s = 'SECRET';</script>",
    "<style>.x:after { content: 'SECRET' }</style>",
    "<head><title>SECRET</title></head>",
    "<template>SECRET</template>",
    "<!-- SECRET -->",
    '<input type="hidden" value="x">',
    '<div style="display:none"><p>SECRET <b>nested</b><br>still SECRET</div>',
    '<div style="display:none"/>SECRET',  # browsers open the div: everything after it is hidden
]


@pytest.mark.parametrize("snippet", HIDDEN)
def test_hidden_content_is_dropped(snippet: str) -> None:
    out = html_to_visible(f"<html><body><p>before</p>{snippet}<p>after</p></body></html>")
    assert "SECRET" not in out.text
    assert "before" in out.text
    if not snippet.endswith("/>SECRET"):
        assert "after" in out.text


@pytest.mark.parametrize(
    "snippet",
    [
        '<span style="font-size:0.5em">VISIBLE</span>',
        '<span style="font-size:10px">VISIBLE</span>',
        '<div style="width:0">VISIBLE</div>',  # overflows, so it shows
        '<span style="opacity:0.5">VISIBLE</span>',
        '<p aria-hidden="false">VISIBLE</p>',
        "<p>VISIBLE</b></i></p>",  # stray end tags
    ],
)
def test_visible_content_is_kept(snippet: str) -> None:
    assert "VISIBLE" in html_to_visible(f"<body>{snippet}</body>").text


def test_structure_entities_and_whitespace() -> None:
    html = "<h1>Title</h1><p>One&nbsp;&amp;   two</p>\n\n\n<ul><li>a</li><li>b</li></ul>x<br>y<img alt='logo' src=x>"
    assert html_to_visible(html).text == "Title\n\nOne & two\n\na\n\nb\n\nx\ny logo"


def test_unclosed_elements_close_with_their_parent() -> None:
    html = '<div style="display:none"><p>SECRET<span>more</div><p>shown'
    assert html_to_visible(html).text == "shown"


def test_links_keep_href_and_visible_text_only() -> None:
    html = (
        '<a href="https://evil.example/x">https://bank.example</a>'
        '<div hidden><a href="https://hidden.example">hidden</a></div>'
        '<a href="https://ok.example"><span style="display:none">SECRET</span>Shop</a>'
    )
    out = html_to_visible(html)
    assert out.links == [
        Link(href="https://evil.example/x", text="https://bank.example"),
        Link(href="https://ok.example", text="Shop"),
    ]


def test_email_body_prefers_html_and_collects_bare_urls() -> None:
    email = EmailInput(text="text part only", html="<p>html part, see https://docs.example/a?b=1.</p>")
    body = email_body(email)
    assert body.text == "html part, see https://docs.example/a?b=1."
    assert [link.href for link in body.links] == ["https://docs.example/a?b=1."]
    assert email_body(EmailInput(text="  plain\t\ttext  ")).text == "plain text"
    assert email_body(EmailInput(text="fallback", html="<style>x</style>")).text == "fallback"


def test_cap_text() -> None:
    assert cap_text("short", 10) == "short"
    long = "word " * 1000
    capped = cap_text(long, 200)
    assert len(capped) <= 200
    assert capped.endswith(TRUNCATION_MARK)
    assert not capped.removesuffix(TRUNCATION_MARK).endswith("wor")  # cut on a word boundary
    assert len(cap_text("x" * 500, 100)) <= 100  # no boundary to find: hard cut


def test_collapse_whitespace() -> None:
    assert collapse_whitespace("a \t b\u00a0\u200bc\n\n\n\n  d  ") == "a b c\n\nd"
