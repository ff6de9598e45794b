"""The parse pool: results in order, and a poison message isolated without failing its batch."""

from __future__ import annotations

import asyncio
import os

from tests.support.imap import make_mail
from worker.mail.message import ParsedMessage, parse_message
from worker.mail.parsepool import ParseFailure, ParsePool, chunks


def many_parts(n: int) -> bytes:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(n))
    return b"Subject: many parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"


async def test_results_come_back_in_order_and_equal_in_process_parsing() -> None:
    raws = [make_mail(i, body="x" * (i * 500)) for i in range(120)]
    pool = ParsePool(2)
    try:
        got = await pool.parse(raws)
    finally:
        pool.close()
    assert got == [parse_message(r) for r in raws]
    assert len(chunks(raws)) > 2  # spread over both processes


async def test_a_message_that_overruns_its_deadline_is_isolated_and_the_pool_recovers() -> None:
    # The middle one takes ~3 s (quiet, 2-core box), the others milliseconds: the deadline is far from both.
    raws = [make_mail(1), many_parts(200_000), make_mail(2)]
    pool = ParsePool(2, timeout_s=0.5, per_mb_s=0)
    try:
        first, poison, last = await pool.parse(raws)
        assert isinstance(poison, ParseFailure) and "longer than 0.5s" in poison.error
        assert isinstance(first, ParsedMessage) and isinstance(last, ParsedMessage)
        assert (first.subject, last.subject) == ("message 1", "message 2")
        [again] = await pool.parse([make_mail(3)])  # a fresh pool took over
        assert isinstance(again, ParsedMessage) and again.subject == "message 3"
    finally:
        pool.close()


async def test_parser_processes_run_below_the_event_loops_cpu_priority() -> None:
    pool = ParsePool(1, nice=7)
    try:
        await pool.parse([make_mail(1)])  # starts the pool
        executor = await pool._executor()
        niceness = await asyncio.get_running_loop().run_in_executor(executor, os.nice, 0)
    finally:
        pool.close()
    assert niceness == min(19, os.nice(0) + 7)
