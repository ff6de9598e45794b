"""Chaos suite: real worker processes and a real redis-server (AOF) or Sentinel set, under SIGKILL loops, Redis
restarts, outages and failovers. `just chaos` runs the long version; tests/chaos/test_*.py a short one."""
