"""Every Redis key the runtime touches, in one place.

arq's own keys are kept so plain arq producers, arq's ``Job`` and arq's worker loop keep working:
``arq:job:<id>`` (job record), ``<queue>`` (zset, score = run-at ms minus priority band),
``arq:in-progress:<id>`` (lease), ``arq:result:<id>``. Our additions live under ``rt:``.
"""

from __future__ import annotations

PRIORITY_BAND_MS = 100_000_000_000  # ~3.2 years: a job of priority p is scored run_at - p * band
FRONT_MS = PRIORITY_BAND_MS // 4  # reclaimed and re-queued jobs: scored a quarter band earlier (lua/front_fn.lua)
MAX_PRIORITY = 9
NONE = "rt:none"  # placeholder for an absent optional key in Lua KEYS

EVENTS = "rt:events"
DEAD_LETTERS = "rt:dlq"
PAUSED = "rt:paused"
CRON_PREFIX = "rt:cron:"
JOURNAL = "rt:journal"  # hash: fleet totals of replayed outcome journals (runtime/replay.py)


def job(job_id: str) -> str:
    return f"arq:job:{job_id}"


def result(job_id: str) -> str:
    return f"arq:result:{job_id}"


def in_progress(job_id: str) -> str:
    return f"arq:in-progress:{job_id}"


def info(job_id: str) -> str:
    """Hash: a = attempts, s = final state, e = last error, p = progress, ft = finish ms."""
    return f"rt:info:{job_id}"


def dead_letter(job_id: str) -> str:
    return f"rt:dlq:{job_id}"


def queue(name: str) -> str:
    return name


def delayed(name: str) -> str:
    """Zset of deferred jobs with a priority: score = run_at_ms * 16 + priority."""
    return f"rt:delayed:{name}"


def active(name: str) -> str:
    """Zset of claimed jobs: score = lease deadline ms * 16 + priority."""
    return f"rt:active:{name}"


def wake(name: str) -> str:
    """One-element list workers block on (BLPOP) instead of polling."""
    return f"rt:wake:{name}"


def stats(name: str) -> str:
    return f"rt:stats:{name}"


def ratelimit(name: str) -> str:
    return f"rt:rl:{name}"


def idempotency(function: str, key: str) -> str:
    return f"rt:idem:{function}:{key}"


DEFAULT_GROUP = ""  # jobs without a group (plain arq producers, old records); its zset is the queue zset
DEFAULT_GROUP_NAME = "~default"  # how the API, CLI and dashboard name it


def group(name: str, group: str) -> str:
    """Zset of one group's waiting jobs (scored like the queue zset); see lua/group_fn.lua."""
    return name if group == DEFAULT_GROUP else f"rt:g:{name}:{group}"


def group_ring(name: str) -> str:
    """Zset of the groups with work: score = when the group may be served next (round robin)."""
    return f"rt:gr:{name}"


def group_active(name: str) -> str:
    """Hash group -> jobs leased."""
    return f"rt:ga:{name}"


def group_jobs(name: str) -> str:
    """Hash leased job id -> its group."""
    return f"rt:gj:{name}"


def group_paused(name: str) -> str:
    return f"rt:gp:{name}"


def claim_keys(name: str) -> list[str]:
    """The KEYS of claim.lua (and claim_group.lua, which adds its groups' after them) for queue ``name``."""
    return [
        queue(name),
        delayed(name),
        active(name),
        EVENTS,
        ratelimit(f"queue:{name}"),
        PAUSED,
        wake(name),
        stats(name),
    ]
