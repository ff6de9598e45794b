"""Spooling big literals: a process's spool directory, the sweep of dead processes' ones, the gauge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.imap import spooled_files
from worker.mail.spool import BUFFERED, LiteralSink, Spooled, process_spool_dir, release


def test_the_first_spool_of_a_process_sweeps_the_directories_of_dead_processes(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = tmp_path / f"worker-mail-{int(gone.stdout)}", tmp_path / f"worker-mail-{os.getppid()}"
    for d in (dead, alive):
        d.mkdir()
        (d / "left.eml").write_bytes(b"x")
    (tmp_path / "worker-mail-notapid").mkdir()  # not ours to judge
    mine = process_spool_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, "worker-mail-notapid", f"worker-mail-{os.getpid()}"]
    )
    assert mine == str(tmp_path / f"worker-mail-{os.getpid()}") and (os.stat(mine).st_mode & 0o777) == 0o700
    os.rmdir(mine)  # removed behind our back: made again
    assert process_spool_dir(str(tmp_path)) == mine and os.path.isdir(mine)


def test_sinks_count_what_they_hold_and_give_it_back(tmp_path: Path) -> None:
    held = (BUFFERED.memory, BUFFERED.spooled)
    small, big = LiteralSink(6, spool_over=10), LiteralSink(12, spool_over=10, spool_dir=str(tmp_path))
    for sink, data in ((small, b"abcdef"), (big, b"0123456789ab")):
        sink.write(data[:4])
        sink.write(data[4:])
    assert (BUFFERED.memory - held[0], BUFFERED.spooled - held[1]) == (6, 12)
    body, spooled = small.finish(), big.finish()
    assert body == b"abcdef" and isinstance(spooled, Spooled) and spooled.read() == b"0123456789ab"
    assert spooled.read(4) == b"0123" and (os.stat(spooled.path).st_mode & 0o777) == 0o600
    release([body, spooled])
    assert (BUFFERED.memory, BUFFERED.spooled) == held and not spooled_files(tmp_path)
    aborted = LiteralSink(100, spool_over=10, spool_dir=str(tmp_path))
    aborted.write(b"partial")
    aborted.abort()  # a FETCH that failed half-way: nothing kept, nothing counted
    assert (BUFFERED.memory, BUFFERED.spooled) == held and not spooled_files(tmp_path)
