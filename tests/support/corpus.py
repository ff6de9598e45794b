# ruff: noqa: RUF001  (non-Latin test strings)
"""The real-world mail corpus (tests/data/corpus, vendored with licences) and generated hostile variants.

`vendored()` reads every vendored message. `variants()` builds the hostile ones deterministically, each with
the subject and sender a correct decoding must give (None where no single answer is right, e.g. undeclared
short 8-bit text): raw UTF-8 (RFC 6532) and raw legacy 8-bit headers, encoded words in unknown charsets or
with broken base64, broken MIME (no boundary, unterminated parts, bad base64, unknown transfer encodings,
deep nesting), missing Date and Message-ID, one Message-ID shared by messages that differ only in an
attachment, a boundary or a charset, and multi-megabyte attachments.

`reference(raw)` is an independent decoding to compare the parser with: the standard library's modern
parser (policy.default) on the text of a message that is valid UTF-8 (so RFC 6532 headers decode) or whose
headers are ASCII; None for other raw 8-bit headers, whose decoding needs a charset guess.
"""

from __future__ import annotations

import base64
import email
import random
from dataclasses import dataclass
from email import policy
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
NOT_MAIL = {"LICENSE", "README.md", ".gitattributes"}


@dataclass(frozen=True)
class Sample:
    """One message of the corpus; `subject`/`sender` are the expected decoding when one is known."""

    name: str
    raw: bytes
    subject: str | None = None
    sender: str | None = None


def vendored() -> list[Sample]:
    """Every vendored message, in a stable order."""
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in NOT_MAIL)
    return [Sample(str(p.relative_to(CORPUS)), p.read_bytes()) for p in files]


def _mail(headers: list[bytes], body: bytes = b"body\r\n") -> bytes:
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


SUBJECTS = [
    ("Grüße aus München – schönes Wochenende", "jörg.müller@bücher.example", "utf-8"),
    ("Привет, как дела у тебя сегодня вечером?", "иван@пример.рф", "utf-8"),
    ("日本語の件名です、よろしくお願いします", "tanaka@example.jp", "utf-8"),
    ("Ça va? Très bien, merci beaucoup à vous", "rené@example.fr", "utf-8"),
    ("Café crème für Zoë und Jürgen", "cafe@example.de", "iso-8859-1"),
    ("Привет из Москвы, дорогой друг мой", "moscow@example.ru", "windows-1251"),
    ("Привет из Новосибирска, друзья", "nsk@example.ru", "koi8-r"),
    ("お世話になっております、山田です", "yamada@example.jp", "shift_jis"),
    ("Zażółć gęślą jaźń w poniedziałek", "pl@example.pl", "iso-8859-2"),
    ("Ελληνικά γράμματα στο θέμα", "gr@example.gr", "iso-8859-7"),
]


def variants(big_attachments: int = 2, big_mb: float = 3.0) -> list[Sample]:
    """The generated hostile messages (deterministic: the same bytes on every call)."""
    rnd = random.Random(11)
    out: list[Sample] = []
    for i, (subject, sender, charset) in enumerate(SUBJECTS):
        # raw 8-bit headers in the charset the body declares (RFC 6532 UTF-8 for the utf-8 ones)
        name = subject.split()[0].strip(",?")
        out.append(
            Sample(
                f"gen/raw-8bit-{charset}-{i}",
                _mail(
                    [
                        b"Subject: " + subject.encode(charset),
                        f"From: {name} <{sender}>".encode(charset)
                        if charset == "utf-8"
                        else b"From: " + sender.encode(),
                        b"To: alice@example.com",
                        f"Message-ID: <raw8-{i}@corpus.example>".encode(),
                        b"Date: Mon, 01 Jun 2026 10:00:00 +0200",
                        b"MIME-Version: 1.0",
                        f"Content-Type: text/plain; charset={charset}".encode(),
                        b"Content-Transfer-Encoding: 8bit",
                    ],
                    subject.encode(charset) + b"\r\n",
                ),
                subject,
                sender,
            )
        )
        # the same text as RFC 2047 encoded words
        words = email.header.Header(subject, "utf-8").encode()
        out.append(
            Sample(
                f"gen/rfc2047-{i}",
                _mail([f"Subject: {words}".encode(), b"From: enc@example.com", f"Message-ID: <ew-{i}@c>".encode()]),
                subject,
                "enc@example.com",
            )
        )
    hostile = [
        [b"Subject: =?x-no-such-charset?q?caf=E9_au_lait?=", b"From: a@example.com"],
        [b"Subject: =?utf-8?b?!!!not base64!!!?=", b"From: b@example.com"],
        [b"Subject: \xff\xfe\xfd undeclared bytes", b"From: \xe9\xe8 <\xe9@\xe8.example>"],
        [b"From: <<<@@>>>", b"To: ,,,;;;", b"Date: not a date", b"Subject: garbage addresses"],
        [b"Subject: no date and no message-id", b"From: c@example.com"],
        [b"Subject: only a subject"],
        [b"From: d@example.com"],
        [b"Content-Type: multipart/mixed", b"Subject: multipart without boundary", b"From: e@example.com"],
        [b"Subject: unknown cte", b"Content-Transfer-Encoding: x-uuencode-ish", b"From: f@example.com"],
        [b'Content-Type: text/plain; charset="utf-8', b"Subject: unterminated quote", b"From: g@example.com"],
        [b"Subject: " + b"x" * 5000, b"From: h@example.com"],
        [b"Subject: " + b" ".join([b"=?utf-8?q?w=C3=B6rd?="] * 400), b"From: i@example.com"],
        [b"To: " + b", ".join(f"user{n}@example.com".encode() for n in range(2000)), b"Subject: many rcpts"],
    ]
    for i, headers in enumerate(hostile):
        out.append(Sample(f"gen/hostile-{i}", _mail(headers, b"\xe9t\xe9 \xff body\r\n")))
    out.append(
        Sample(
            "gen/unterminated-multipart",
            _mail(
                [b'Content-Type: multipart/mixed; boundary="zz"', b"Subject: cut off", b"From: j@example.com"],
                b"--zz\r\nContent-Type: text/plain\r\n\r\nhalf a part",
            ),
            "cut off",
            "j@example.com",
        )
    )
    nested = b"inner\r\n"
    for depth in range(60):
        b = f"d{depth}".encode()
        nested = b"--" + b + b'\r\nContent-Type: multipart/mixed; boundary="d%d"\r\n\r\n' % (depth + 1) + nested
        nested += b"\r\n--" + b + b"--\r\n"
    out.append(
        Sample(
            "gen/deep-nesting",
            _mail([b'Content-Type: multipart/mixed; boundary="d0"', b"Subject: deep", b"From: k@example.com"], nested),
            "deep",
            "k@example.com",
        )
    )
    # one Message-ID, five different messages: never merged
    for i, (boundary, charset, payload) in enumerate(
        [
            (b"b1", b"utf-8", b"AAAA"),
            (b"b2", b"utf-8", b"AAAA"),
            (b"b1", b"iso-8859-1", b"AAAA"),
            (b"b1", b"utf-8", b"AAAB"),
            (b"b1", b"utf-8", b""),
        ]
    ):
        out.append(
            Sample(
                f"gen/same-message-id-{i}",
                _mail(
                    [
                        b"Subject: same id",
                        b"From: l@example.com",
                        b"Message-ID: <dup@corpus.example>",
                        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"',
                    ],
                    b"--" + boundary + b"\r\nContent-Type: text/plain; charset=" + charset + b"\r\n\r\nhello\r\n"
                    b"--" + boundary + b"\r\nContent-Type: application/octet-stream\r\n"
                    b'Content-Disposition: attachment; filename="a.bin"\r\n'
                    b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"\r\n--" + boundary + b"--\r\n",
                ),
                "same id",
                "l@example.com",
            )
        )
    for i in range(big_attachments):
        data = base64.encodebytes(rnd.randbytes(int(big_mb * 1024 * 1024 * 3 / 4))).replace(b"\n", b"\r\n")
        out.append(
            Sample(
                f"gen/big-attachment-{i}",
                _mail(
                    [
                        f"Subject: big attachment {i}".encode(),
                        b"From: big@example.com",
                        b'Content-Type: multipart/mixed; boundary="big"',
                    ],
                    b"--big\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                    b"--big\r\nContent-Type: application/pdf\r\n"
                    b'Content-Disposition: attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="\r\n'
                    b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--big--\r\n",
                ),
                f"big attachment {i}",
                "big@example.com",
            )
        )
    return out


def reference(raw: bytes) -> email.message.EmailMessage | None:
    """The standard library's modern parse of `raw` when it needs no charset guess (see the module doc)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        if not head.isascii():
            return None
        return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]
    return email.message_from_string(text, policy=policy.default)  # type: ignore[return-value]
