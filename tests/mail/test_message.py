# ruff: noqa: RUF001  (Cyrillic test strings)
"""Building outgoing mail strictly and parsing incoming mail tolerantly."""

from __future__ import annotations

import base64
import email
from email import policy

import pytest

from tests.support.imap import make_mail
from worker.mail.decode import charset_codec, clean, decode_bytes, is_clean
from worker.mail.message import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    content_id,
    new_message_id,
    parse_message,
    validate_address,
)


def build(**over: object) -> email.message.EmailMessage:
    values: dict[str, object] = {
        "sender": "alice@example.com",
        "to": ["bob@example.com"],
        "subject": "Hello",
        "message_id": "<fixed@example.com>",
        "text": "Hi Bob",
    }
    return build_message(**(values | over))  # type: ignore[arg-type]


def test_build_message_headers_and_bcc_privacy() -> None:
    msg = build(cc=["carol@example.com"], html="<p>Hi</p>", sender_name="Alice A.", subject="Grüße ✓")
    raw = msg.as_bytes()
    assert msg["Message-ID"] == "<fixed@example.com>"
    assert b"Bcc" not in raw and b"\r\n" in raw and raw.isascii()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Grüße ✓" and parsed["From"].addresses[0].display_name == "Alice A."
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Hi</p>"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hi\r\nBcc: victim@example.com"),
        ("subject", "Hi\nX-Evil: 1"),
        ("sender_name", "Alice\r\nBcc: victim@example.com"),
        ("message_id", "<a@b>\r\nX-Evil: 1"),
    ],
)
def test_header_injection_is_rejected(field: str, value: str) -> None:
    with pytest.raises(HeaderInjectionError, match="header injection"):
        build(**{field: value})


@pytest.mark.parametrize(
    "address",
    [
        "a@b.com, c@d.com",  # parseaddr would silently keep the first one
        "Bob <bob@example.com>",
        "bob@exa mple.com",
        "bob",
        "bob@",
        "@example.com",
        "bob@example.com\r\nBcc: x@y.com",
        " bob@example.com",
        "bob@@example.com",
    ],
)
def test_addresses_are_validated_strictly(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        validate_address(address)
    with pytest.raises(InvalidAddressError):
        build(to=[address])


def test_valid_addresses_and_message_id() -> None:
    assert validate_address("Bob.Smith+tag@Example.COM") == "Bob.Smith+tag@example.com"
    assert validate_address("jörg@bücher.example") == "jörg@bücher.example"
    mid = new_message_id("alice@example.com")
    assert mid.startswith("<") and mid.endswith("@example.com>") and mid != new_message_id("alice@example.com")
    with pytest.raises(InvalidAddressError):
        build(to=[], cc=[])


def test_content_id_covers_the_whole_message_and_only_line_endings_are_normalised() -> None:
    raw = make_mail(1)
    cid = content_id(raw)
    assert content_id(raw.replace(b"\r\n", b"\n")) == cid  # a server serving LF or CRLF: the same copy
    assert content_id(raw + b"\r\n") != cid and content_id(raw.replace(b"\r\n", b"\r")) != cid
    assert content_id(make_mail(2)) != cid
    assert content_id(raw.replace(b"Body of", b"Changed")) != cid  # same Message-ID, other body
    relayed = b"Received: from mx by imap; Thu, 1 Jan 2026\r\n" + raw  # another delivery of the same mail
    assert content_id(relayed) != cid


def multipart(boundary: bytes, charset: bytes = b"utf-8", attachment: bytes = b"AAAA") -> bytes:
    return (
        b"From: a@example.com\r\nSubject: same\r\nMessage-ID: <same@x>\r\n"
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        b"--" + boundary + b"\r\nContent-Type: text/plain; charset=" + charset + b"\r\n\r\nhello\r\n"
        b"--"
        + boundary
        + b'\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="a"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n--" + boundary + b"--\r\n"
    )


def test_messages_differing_only_in_attachments_boundaries_or_charsets_are_distinct() -> None:
    variants = [
        multipart(b"b1"),
        multipart(b"b2"),
        multipart(b"b1", b"iso-8859-1"),
        multipart(b"b1", attachment=b"AAAB"),
    ]
    parsed = [parse_message(v) for v in variants]
    assert {p.subject for p in parsed} == {"same"} and {p.text.strip() for p in parsed} == {"hello"}
    assert len({p.content_id for p in parsed}) == len(variants)


BROKEN = [
    b"",
    b"\x00\xff\xfe garbage without headers",
    b"Content-Type: multipart/mixed; boundary=zzz\r\nSubject: cut\r\n\r\n--zzz\r\nContent-Type: text/plain\r\n\r\nhalf",
    b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter",
    b"Subject: =?x-unknown?q?abc?=\r\nContent-Type: text/plain; charset=x-unknown-8\r\n\r\n\xe9t\xe9",
    b"Subject: bad b64\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n!!!notb64",
    b"From: <<<@@>>>\r\nTo: ,,,;;;\r\nDate: not a date\r\nSubject: \xff\xfe raw 8bit\r\n\r\nbody",
    b'Content-Type: text/plain; charset="utf-8\r\nSubject: unterminated quote\r\n\r\nbody',
]


@pytest.mark.parametrize("raw", BROKEN)
def test_parse_never_raises_on_broken_mail(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.size == len(raw) and len(parsed.content_id) == 64
    parsed.model_dump_json().encode("utf-8")  # every string encodes


@pytest.mark.parametrize(
    ("raw", "subject", "sender", "name"),
    [
        # RFC 6532: raw UTF-8 in headers, also in the address itself
        (
            "Subject: Grüße ✓\r\nFrom: Jörg Müller <jörg@bücher.example>\r\n\r\nx".encode(),
            "Grüße ✓",
            "jörg@bücher.example",
            "Jörg Müller",
        ),
        # raw 8-bit Latin-1 headers with a Latin-1 body declared: the declared charset wins
        (
            b"Subject: Caf\xe9 cr\xe8me\r\nFrom: Ren\xe9 <rene@example.fr>\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nd\xe9j\xe0",
            "Café crème",
            "rene@example.fr",
            "René",
        ),
        # raw 8-bit cp1251 without any declaration: detected
        (
            "Subject: Привет, как дела у тебя сегодня\r\nFrom: Иван Петров <ivan@example.ru>\r\n\r\nx".encode("cp1251"),
            "Привет, как дела у тебя сегодня",
            "ivan@example.ru",
            "Иван Петров",
        ),
        # an encoded word in an unknown charset: stdlib leaves surrogates, we never do
        (
            b"Subject: =?x-unknown?q?caf=E9?=\r\nFrom: =?utf-8?q?Bj=C3=B6rn?= <b@example.com>\r\n\r\nx",
            None,
            "b@example.com",
            "Björn",
        ),
        (b"Subject: \xff\xfe\x00 raw\r\nFrom: \xff <\xfe@\xfd>\r\n\r\n\x00", None, None, None),
    ],
)
def test_raw_8bit_and_rfc6532_headers_decode_to_clean_text(
    raw: bytes, subject: str | None, sender: str | None, name: str | None
) -> None:
    parsed = parse_message(raw)
    dumped = parsed.model_dump()
    strings = [parsed.subject, parsed.from_, parsed.from_name, parsed.text, *parsed.to, *parsed.defects]
    assert all(is_clean(s) for s in strings), dumped
    parsed.model_dump_json().encode("utf-8")
    if subject is not None:
        assert parsed.subject == subject
    if sender is not None:
        assert (parsed.from_, parsed.from_name) == (sender, name)


def test_decode_bytes_order_utf8_declared_detected_replacement() -> None:
    assert decode_bytes("naïve".encode()) == "naïve"
    assert decode_bytes("naïve".encode("latin-1"), "iso-8859-1") == "naïve"
    assert decode_bytes("naïve".encode("latin-1"), "x-no-such-charset") != ""  # detected or replaced, no raise
    assert decode_bytes(b"a\x00b") == "a\ufffdb"
    text = "Привет, как дела у тебя сегодня? Иван Петров пишет письмо другу.".encode("cp1251")
    assert decode_bytes(text) == "Привет, как дела у тебя сегодня? Иван Петров пишет письмо другу."
    assert decode_bytes("Это текст.".encode("koi8-r"), "koi8-r") == "Это текст."
    assert is_clean(decode_bytes(b"\\ud800", "unicode_escape"))  # not a mail charset: never used
    assert clean("a\udcff\ud800b") and is_clean(clean("a\udcff\ud800b"))


@pytest.mark.parametrize("name", ["unicode-escape", "unicode_escape", "raw-unicode-escape", "idna", "punycode"])
def test_python_codecs_that_are_not_mail_charsets_are_never_used(name: str) -> None:
    assert charset_codec(name) is None
    # not UTF-8 (the 0xe9), so the declared charset would be tried: its escapes must stay text
    assert "\\x41" in decode_bytes(b"caf\xe9 \\x41", name)


def test_parse_odd_charsets_and_defects() -> None:
    raw = (
        b"Subject: =?koi8-r?b?8NLJ18XU?=\r\nFrom: a@example.com\r\n"
        b"Content-Type: text/plain; charset=windows-1251\r\n\r\n"
    ) + "Привет".encode("cp1251")
    parsed = parse_message(raw)
    assert parsed.subject == "Привет" and parsed.text.strip() == "Привет" and parsed.from_ == "a@example.com"
    unknown = parse_message(BROKEN[4])
    assert unknown.defects  # the unknown charset is reported, text decoded best-effort
    assert "t" in unknown.text


def test_parse_huge_attachment_keeps_metadata_only() -> None:
    payload = b"\x89PNG" + bytes(range(256)) * 20_000  # ~5 MB
    b64 = base64.encodebytes(payload)
    raw = (
        b"From: a@example.com\r\nSubject: big\r\nMessage-ID: <big@x>\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b'--b1\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="x.png"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--b1--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text.strip() == "see attached" and parsed.message_id_header == "<big@x>"
    [att] = parsed.attachments
    assert (att.filename, att.content_type, att.size) == ("x.png", "image/png", len(payload))
    assert len(parsed.model_dump_json()) < 10_000


def test_triage_headers_are_kept_lower_cased_and_bounded() -> None:
    raw = (
        b"From: news@shop.example\r\nTo: me@example.com\r\nSubject: Deals\r\n"
        b"List-Id: <deals.shop.example>\r\nList-Unsubscribe: <https://shop.example/u>\r\n"
        b"X-Priority: 5\r\nX-Other: not kept\r\nReply-To: " + b"a" * 2000 + b"@x.example\r\n\r\nHello\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.headers["list-id"] == "<deals.shop.example>"
    assert parsed.headers["list-unsubscribe"] == "<https://shop.example/u>"
    assert parsed.headers["x-priority"] == "5"
    assert "x-other" not in parsed.headers
    assert len(parsed.headers["reply-to"]) == 1000
