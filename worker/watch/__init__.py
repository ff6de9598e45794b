"""IMAP IDLE watchers shared by the worker fleet: new mail is synced seconds after it arrives.

- `client`: a small asyncio IMAP client for watch connections (LOGIN / OAuth2 SASL, EXAMINE, IDLE, NOOP).
- `watcher`: one watched mailbox (connect, IDLE or poll, reconnect with backoff, auth_error handling).
- `trigger`: pushes -> debounced `sync_mailbox` jobs; arrival -> stored latency.
- `lease`, `fleet`: one owner per watch through Redis leases; fair share across processes; takeover.
- `limits`: fleet-wide connect rate per IMAP host; reconnect backoff.
- `service`: the long-running service (`worker watch`, and inside `worker run`).
- `view`: the watch state the API, CLI, dashboard and metrics show.
"""
