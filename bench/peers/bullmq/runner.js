// Benchmark runner for BullMQ (Node). Same commands and JSON-lines protocol as bench/common.py:
//   node runner.js <command> '<json params>'
// bullmq is resolved through NODE_PATH (bench/run.py installs it into a scratch dir at run time).
'use strict';

const { performance } = require('node:perf_hooks');
const readline = require('node:readline');

const QUEUE = 'bench';
const SLEEP_MS = 10;
const CRASH_SLEEP_MS = 30000;
const BATCH_CHUNK = 1000;
const FILL_IN_FLIGHT = 32;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// wall clock in seconds with sub-millisecond resolution, comparable with Python's time.time()
function wall() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function mono() {
  return performance.now() / 1000;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((q / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

function summary(values) {
  return {
    n: values.length,
    p50: percentile(values, 50),
    p90: percentile(values, 90),
    p99: percentile(values, 99),
    max: values.length ? Math.max(...values) : null,
  };
}

const REC = {
  reset() {
    this.started = 0;
    this.ended = 0;
    this.maxInFlight = 0;
    this.firstStart = null;
    this.lastEnd = null;
    this.latency = {};
    this.target = null;
    this.expect = null;
    this.done = new Promise((r) => {
      this.resolveDone = r;
    });
  },
  expectMet() {
    return Object.entries(this.expect || {}).every(([tag, n]) => (this.latency[tag] || []).length >= n);
  },
  start(data) {
    const now = wall();
    if (this.firstStart === null) this.firstStart = mono();
    this.started += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.started - this.ended);
    if (data && typeof data.tag === 'string' && typeof data.ts === 'number') {
      (this.latency[data.tag] = this.latency[data.tag] || []).push((now - data.ts) * 1000);
      if (this.expect && this.expectMet()) this.resolveDone();
    }
  },
  end() {
    this.ended += 1;
    this.lastEnd = mono();
    if (this.target !== null && this.ended >= this.target) this.resolveDone();
  },
};
REC.reset();

function withTimeout(promise, ms) {
  let timer;
  return Promise.race([
    promise.then(() => false),
    new Promise((r) => {
      timer = setTimeout(() => r(true), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

class BullAdapter {
  constructor(params) {
    this.params = params;
    const u = new URL(params.redis_url);
    this.connection = {
      host: u.hostname,
      port: Number(u.port || 6379),
      db: Number((u.pathname || '/0').slice(1) || 0),
      maxRetriesPerRequest: null,
    };
    this.bullmq = require('bullmq');
    this.queue = null;
    this.worker = null;
  }

  version() {
    return require('bullmq/package.json').version;
  }

  async open() {
    this.queue = new this.bullmq.Queue(QUEUE, { connection: this.connection });
    await this.queue.waitUntilReady();
  }

  async close() {
    if (this.infoClient) this.infoClient.disconnect();
    if (this.queue) await this.queue.close();
  }

  async enqueue(kind, data, runAt) {
    const opts = {};
    if (runAt) opts.delay = Math.max(0, Math.round((runAt - wall()) * 1000));
    await this.queue.add(kind, data, opts);
  }

  async enqueueBatch(kind, datas) {
    await this.queue.addBulk(datas.map((data) => ({ name: kind, data })));
  }

  async startWorker(concurrency) {
    const processor = async (job) => {
      const data = job.data || {};
      REC.start(data);
      if (job.name === 'sleep') await sleep(SLEEP_MS);
      else if (job.name === 'crash') {
        emit({ event: 'job_started', t: wall(), attempt: job.attemptsStarted ?? job.attemptsMade });
        await sleep(CRASH_SLEEP_MS);
      }
      REC.end();
    };
    this.worker = new this.bullmq.Worker(QUEUE, processor, { connection: this.connection, concurrency });
    this.worker.on('error', (err) => process.stderr.write(`worker error: ${err}\n`));
    await this.worker.waitUntilReady();
  }

  async stopWorker() {
    if (this.worker) await withTimeout(this.worker.close(true), 3000);
  }

  async usedMemory() {
    // a plain ioredis client of our own (opened before the first reading, so it is in both)
    if (!this.infoClient) {
      const IORedis = require('ioredis');
      this.infoClient = new IORedis(this.connection);
    }
    const info = await this.infoClient.info('memory');
    const m = /used_memory:(\d+)/.exec(info);
    return Number(m[1]);
  }
}

// Event-loop lag, measured like bench/common.py: how late a 5 ms timer fires, with its time.
class LagMonitor {
  constructor(intervalMs = 5) {
    this.interval = intervalMs;
    this.samples = [];
    this.stopped = false;
  }
  start() {
    const tick = () => {
      if (this.stopped || this.samples.length > 2000000) return;
      const t0 = mono();
      setTimeout(() => {
        const t1 = mono();
        this.samples.push([t1, Math.max(0, (t1 - t0) * 1000 - this.interval)]);
        tick();
      }, this.interval);
    };
    tick();
  }
  stop() {
    this.stopped = true;
  }
  window(lo, hi) {
    if (lo === null || hi === null) return [];
    return this.samples.filter(([t]) => t >= lo && t <= hi + this.interval / 1000).map(([, lag]) => lag);
  }
}

async function inFlight(n, width, one) {
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const i = next++;
      await one(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, n) }, lane));
}

async function fill(a, kind, n) {
  for (let lo = 0; lo < n; lo += BATCH_CHUNK) {
    const chunk = [];
    for (let i = lo; i < Math.min(n, lo + BATCH_CHUNK); i++) chunk.push({ ts: wall(), tag: 'fill', i });
    await a.enqueueBatch(kind, chunk);
  }
}

async function produceOne(a, p) {
  const times = [];
  let sent = 0;
  if (p.mode === 'rate') {
    const t0 = wall() + 0.05;
    for (let i = 0; i < p.count; i++) {
      const wait = (t0 + i / p.rate - wall()) * 1000;
      if (wait > 0) await sleep(wait);
      const s = mono();
      await a.enqueue('noop', { ts: wall(), tag: p.tag, i });
      times.push((mono() - s) * 1000);
      sent += 1;
    }
  } else if (p.mode === 'sched') {
    const base = wall() + p.delay_s;
    for (let i = 0; i < p.count; i++) {
      const planned = base + (p.spread_s * i) / p.count;
      await a.enqueue('noop', { ts: planned, tag: 'sched', i }, planned);
      sent += 1;
    }
  } else if (p.mode === 'crash') {
    await a.enqueue('crash', { ts: wall(), tag: 'crash' });
    sent = 1;
  } else {
    throw new Error(`unknown produce mode ${p.mode}`);
  }
  return { sent, enqueue_p50_ms: percentile(times, 50), enqueue_p99_ms: percentile(times, 99) };
}

const commands = {
  async probe(a) {
    await a.open();
    return { ok: true, version: a.version() };
  },

  async enqueue(a, p) {
    await a.open();
    const out = {};
    let n = p.n_serial;
    let t0 = mono();
    for (let i = 0; i < n; i++) await a.enqueue('noop', { ts: wall(), tag: 'e', i });
    out.serial_jobs_s = n / (mono() - t0);

    n = p.n_c32;
    t0 = mono();
    await inFlight(n, 32, (i) => a.enqueue('noop', { ts: wall(), tag: 'e', i }));
    out.c32_jobs_s = n / (mono() - t0);

    n = p.n_batch;
    const chunks = [];
    for (let lo = 0; lo < n; lo += BATCH_CHUNK) {
      const chunk = [];
      for (let i = lo; i < Math.min(n, lo + BATCH_CHUNK); i++) chunk.push({ ts: 0, tag: 'e', i });
      chunks.push(chunk);
    }
    t0 = mono();
    for (const chunk of chunks) await a.enqueueBatch('noop', chunk);
    out.batch_jobs_s = n / (mono() - t0);
    return out;
  },

  async drain(a, p) {
    const { n, concurrency, kind } = p;
    await a.open();
    if (p.warmup) {
      // same jobs through a first worker: JIT, Lua script cache, connections
      await fill(a, kind, p.warmup);
      REC.target = p.warmup;
      await a.startWorker(concurrency);
      await withTimeout(REC.done, Math.min(p.cap_s, 5) * 1000);
      await a.stopWorker();
      REC.reset();
    }
    await fill(a, kind, n);
    emit({ event: 'filled' });
    REC.target = n;
    const lag = p.lag ? new LagMonitor() : null;
    if (lag) lag.start();
    const cpu0 = process.cpuUsage();
    const tStart = mono();
    await a.startWorker(concurrency);
    const timedOut = await withTimeout(REC.done, p.cap_s * 1000);
    const cpu = process.cpuUsage(cpu0);
    if (lag) lag.stop();
    const done = REC.ended;
    const span = REC.firstStart !== null && REC.lastEnd !== null ? REC.lastEnd - REC.firstStart : null;
    const out = {
      n,
      done,
      partial: timedOut,
      seconds: span,
      jobs_s: span ? done / span : null,
      jobs_s_from_worker_start: REC.lastEnd !== null ? done / (REC.lastEnd - tStart) : null,
      max_in_flight: REC.maxInFlight,
      worker_cpu_us_per_job: done ? (cpu.user + cpu.system) / done : null,
    };
    if (kind === 'sleep' && span) out.efficiency_pct = (100 * (done * SLEEP_MS) / 1000 / concurrency) / span;
    if (lag) {
      const lags = lag.window(REC.firstStart, REC.lastEnd);
      out.loop_lag_p99_ms = percentile(lags, 99);
      out.loop_lag_max_ms = lags.length ? Math.max(...lags) : null;
      out.loop_lag_samples = lags.length;
    }
    emit({ result: out });
    await a.stopWorker();
    return null;
  },

  async serve(a, p) {
    await a.open();
    await a.startWorker(p.concurrency);
    await sleep(200);
    emit({ event: 'ready' });
    const rl = readline.createInterface({ input: process.stdin });
    let lines = 0;
    for await (const line of rl) {
      if (++lines > 100) break;
      if (!line.trim()) continue;
      const msg = JSON.parse(line);
      if (msg.cmd === 'report') {
        REC.expect = msg.expect || {};
        if (!REC.expectMet()) await withTimeout(REC.done, (msg.timeout ?? 5) * 1000);
        const latency = {};
        for (const [tag, v] of Object.entries(REC.latency)) latency[tag] = summary(v);
        emit({ result: { latency } });
        break;
      }
      if (msg.cmd === 'exit') break;
    }
    rl.close();
    await a.stopWorker();
    return null;
  },

  async produce(a, p) {
    await a.open();
    const phases = [];
    for (const ph of p.phases || [p]) phases.push(await produceOne(a, { ...p, ...ph }));
    return { phases };
  },

  async bytes(a, p) {
    await a.open();
    await a.enqueue('idonly', { tenant_id: 't1', message_id: 'm-999999' });
    await sleep(50);
    const before = await a.usedMemory();
    for (let i = 0; i < p.n; i++) {
      await a.enqueue('idonly', { tenant_id: 't1', message_id: `m-${String(i).padStart(6, '0')}` });
    }
    const after = await a.usedMemory();
    return { bytes_per_job: (after - before) / p.n, before, after };
  },
};

async function main() {
  const [command, raw] = process.argv.slice(2);
  const params = raw ? JSON.parse(raw) : {};
  if (!commands[command]) {
    emit({ error: `unknown command ${command}` });
    process.exit(2);
  }
  let a;
  try {
    a = new BullAdapter(params);
    const out = await commands[command](a, params);
    if (out) emit({ result: out });
  } catch (err) {
    emit({ error: `${err && err.name}: ${err && err.message}` });
    process.exitCode = 1;
  } finally {
    if (a) await withTimeout(a.close().catch(() => {}), 3000);
    setTimeout(() => process.exit(), 100).unref();
  }
}

main().then(() => process.exit());
