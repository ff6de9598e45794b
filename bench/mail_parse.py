"""Our parser (stdlib email, compat32 + selective modern header parsing) vs fast-mail-parser (Rust), side by side.

    python -m bench.mail_parse [--messages 2000]

Speed: microseconds per typical message, in this process (the worker runs ours in its parse pool, one
process per core). Correctness on the corpus (tests/data/corpus plus the generated hostile variants): how
often each raises, returns a subject that fails to encode, or a subject different from the expected decoding
(the generator's, else the standard library's modern parser where no charset guess is needed). Needs the
`bench` extra (fast-mail-parser).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable

import fast_mail_parser

from tests.support.corpus import Sample, reference, variants, vendored
from tests.support.imap import make_mail
from worker.mail.decode import is_clean
from worker.mail.message import parse_message

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def expected_subject(sample: Sample) -> str | None:
    if sample.subject is not None:
        return sample.subject
    ref = reference(sample.raw)
    if ref is None:
        return None
    try:
        subject = _CTRL.sub(" ", str(ref["subject"] or "")).strip()
    except Exception:
        return None
    return subject if is_clean(subject) and len(subject) < 60_000 else None


def ours(raw: bytes) -> str:
    return parse_message(raw).subject


def theirs(raw: bytes) -> str:
    return str(fast_mail_parser.parse_email(raw).subject or "").strip()


def check(subject_of: Callable[[bytes], str], samples: list[Sample]) -> dict[str, int]:
    raised = unclean = wrong = compared = 0
    for sample in samples:
        try:
            subject = subject_of(sample.raw)
        except Exception:
            raised += 1
            continue
        unclean += not is_clean(subject)
        expected = expected_subject(sample)
        if expected is not None:
            compared += 1
            wrong += subject != expected
    return {"messages": len(samples), "raised": raised, "unclean": unclean, "wrong": wrong, "compared": compared}


def main(messages: int) -> None:
    typical = [make_mail(i) for i in range(messages)]
    samples = vendored() + variants()
    load = os.getloadavg()[0]
    out: dict[str, object] = {}
    print(f"{'parser':20} {'us/msg':>8} {'raised':>7} {'unclean':>8} {'wrong subject':>14}")
    for name, fn in (("ours (stdlib email)", ours), ("fast-mail-parser", theirs)):
        start = time.perf_counter()
        for raw in typical:
            fn(raw)
        per = (time.perf_counter() - start) / messages * 1e6
        result = check(fn, samples)
        print(
            f"{name:20} {per:8.0f} {result['raised']:7} {result['unclean']:8} {result['wrong']:8}/{result['compared']}"
        )
        out[name] = {"us_per_msg": per, **result}
    print(f"corpus: {len(samples)} messages; load average {load:.2f} on {os.cpu_count()} cores (shared machine)")
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    main(parser.parse_args().messages)
