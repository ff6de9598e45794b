# Recipes run inside the project venv (created by `bash .ci/run`).
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# Lint, type-check, then the whole test suite in parallel (real redis, SMTP, IMAP, browser).
test: lint
    pytest -n 2 -q -p no:cacheprovider --durations=15

# ruff and mypy, clean.
lint:
    ruff check worker tests bench settings.py
    ruff format --check worker tests bench settings.py
    mypy worker settings.py

# Format the code in place.
fmt:
    ruff format worker tests bench settings.py
    ruff check --fix worker tests bench settings.py

# Run workers for all four queues in one process (embedded redis when REDIS_URL is unset). A development
# recipe: it accepts the development SECRET_KEY (ALLOW_DEV_SECRET=1); `python -m worker run` does not.
run *ARGS:
    ALLOW_DEV_SECRET="${ALLOW_DEV_SECRET:-1}" python -m worker run {{ARGS}}

# The end-to-end demo: local redis, SMTP sink, IMAP server, workers, API; prints a summary.
demo:
    python -m worker demo

# Serve the HTTP API and dashboard (development recipe: accepts the development SECRET_KEY, like `run`).
api:
    ALLOW_DEV_SECRET="${ALLOW_DEV_SECRET:-1}" python -m worker api

# Chaos runs (real workers and redis-server: SIGKILL loops, Redis restarts, a 30 s outage, a Sentinel failover).
chaos *ARGS:
    python -m tests.chaos {{ARGS}}

# Schema-driven fuzz of the API (schemathesis, real Redis + SQLite): prints requests, 5xx, schema violations.
fuzz *ARGS:
    python -m tests.api.fuzz {{ARGS}}

# Full side-by-side benchmark against arq, SAQ and BullMQ.
bench:
    python -m bench.run --full

# The quick benchmark (< 3 minutes).
bench-quick:
    python -m bench.run --quick

# Chaos run of send-email: workers SIGKILLed at random points of sends; reports deliveries and final states.
send-chaos *ARGS:
    python -m bench.send_chaos {{ARGS}}

# IMAP IDLE watch benchmarks (moderate sizes for a shared machine; pass larger --watches/--mailboxes by hand).
bench-watch:
    python -m bench.watch_latency --mailboxes 100 --rate 5 --duration 40 --connect-rate 25
    python -m bench.watch_fleet --watches 300 --processes 3 --connect-rate 40
    python -m bench.watch_scale --watches 1000 --rate 40 --idle-s 30
