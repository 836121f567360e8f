/**
 * Failover scenario: the primary origin dies under load.
 *
 * A gateway (compiled, as `npm start` runs it) proxies to a service with a
 * primary and a secondary upstream, each its own process on loopback.
 * Closed-loop GET load runs through the gateway (autocannon, `--connections`
 * clients each sending the next request when the previous answer is in);
 * at `--kill-at` seconds the primary gets SIGKILL. The service uses the
 * SPEC's default health checks (every 1 s, 2 failures) and breaker
 * (10 requests, 50%), unless `--interval` changes the probe interval.
 *
 *   npm run bench -- failover [--kill-at 2] [--interval 1000] [--duration S] [--reps N] [--connections C] [--warmup S]
 *
 * Per run it reports:
 * - failed responses: non-2xx answers and client-side errors (autocannon);
 * - switch: ms from the SIGKILL to the gateway's `failover` switch line
 *   (every request after it goes straight to the secondary), and what
 *   switched it (the passive breaker or the active health checks);
 * - retried: requests that met the dead primary first and were answered by
 *   the secondary (gateway_failovers_total{kind="retry"});
 * - longest stall: the longest time without a successful response;
 * - p99 latency of requests started before the kill, between the kill and
 *   the switch, and after the switch.
 * Every run starts fresh processes; the last row is the median of the runs
 * (failed responses: the total).
 */
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import autocannon from 'autocannon'
import { request } from 'undici'
import { fmt, load, median, parseBenchArgs, pinning, printTable, startGateway, startUpstream, type ChildHandle, type CommonArgs } from './lib.js'

interface Options { killAtS: number, intervalMs: number }

interface RunResult {
  requests: number
  rps: number
  failed: number
  /** ms from SIGKILL to the switch line; NaN when the gateway never switched. */
  switchMs: number
  switchBy: string
  retried: number
  stallMs: number
  /** Longest time without a success overlapping the kill -> switch interval. */
  killStallMs: number
  /** Where the longest stall started and when the primary was killed, seconds from the start of the load. */
  stallAtS: number
  killAtS: number
  p99Before: number
  p99Between: number
  p99After: number
  nBetween: number
}

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { 'kill-at': { type: 'string' }, interval: { type: 'string' } })
  const killAtS = values['kill-at'] === undefined ? 2 : Number(values['kill-at'])
  const intervalMs = values.interval === undefined ? 1000 : Number(values.interval)
  if (!Number.isFinite(killAtS) || killAtS <= 0 || killAtS >= common.duration) throw new Error(`--kill-at must be a number of seconds between 0 and --duration (${common.duration}); got ${String(values['kill-at'])}`)
  if (!Number.isInteger(intervalMs) || intervalMs < 50) throw new Error(`--interval must be an integer >= 50 (ms); got ${String(values.interval)}`)
  const opts: Options = { killAtS, intervalMs }

  const results: RunResult[] = []
  for (let rep = 1; rep <= common.reps; rep++) {
    const r = await oneRun(common, opts)
    results.push(r)
    process.stderr.write(`failover: run ${rep}/${common.reps}: ${r.failed} failed of ${r.requests}, switch ${fmt(r.switchMs)} ms after the kill (${r.switchBy}), stall across it ${fmt(r.killStallMs, 1)} ms, longest stall ${fmt(r.stallMs, 1)} ms at ${(r.stallAtS - r.killAtS).toFixed(2)} s from the kill\n`)
  }

  const row = (name: string, r: RunResult): string[] => [
    name, fmt(r.requests), fmt(r.rps), fmt(r.failed), fmt(r.retried), fmt(r.switchMs), r.switchBy,
    fmt(r.killStallMs, 1), fmt(r.stallMs, 1), Number.isNaN(r.stallAtS) ? '-' : (r.stallAtS - r.killAtS).toFixed(2), fmt(r.p99Before, 1), r.nBetween === 0 ? '-' : `${fmt(r.p99Between, 1)} (${fmt(r.nBetween)})`, fmt(r.p99After, 1)
  ]
  const m = (f: (r: RunResult) => number): number => median(results.map(f))
  const mid: RunResult = {
    requests: m((r) => r.requests),
    rps: m((r) => r.rps),
    failed: results.reduce((a, r) => a + r.failed, 0),
    switchMs: m((r) => r.switchMs),
    switchBy: [...new Set(results.map((r) => r.switchBy))].join('/'),
    retried: m((r) => r.retried),
    stallMs: m((r) => r.stallMs),
    killStallMs: m((r) => r.killStallMs),
    stallAtS: Number.NaN,
    killAtS: Number.NaN,
    p99Before: m((r) => r.p99Before),
    p99Between: m((r) => r.p99Between),
    p99After: m((r) => r.p99After),
    nBetween: results.reduce((a, r) => a + r.nBetween, 0)
  }
  printTable({
    title: `failover — primary SIGKILLed at t=${killAtS} s under closed-loop GET load, ${common.connections} connections, ${common.duration} s × ${common.reps}`,
    columns: ['run', 'requests', 'req/s', 'failed', 'retried', 'switch ms', 'switched by', 'kill stall ms', 'longest stall ms', 'at s', 'p99 before', 'p99 kill→switch (n)', 'p99 after switch'],
    rows: [...results.map((r, i) => row(`run ${i + 1}`, r)), row(`median of ${results.length}`, mid)],
    notes: [
      'failed = non-2xx answers + client errors (median row: total over all runs); retried = requests that met the dead primary first and got the secondary\'s answer',
      'switch ms = SIGKILL -> the gateway\'s failover line (1 ms resolution); kill stall = longest time without a successful response across the kill -> switch interval;',
      'longest stall = the same over the whole run, starting "at" s from the kill (elsewhere than 0: the machine, not the failover); p99 in ms by request start time (median row: n is the total)',
      `health checks every ${intervalMs} ms, unhealthyThreshold 2; breaker volumeThreshold 10, 50%; 1 KB JSON upstreams; gateway at info logging to a file`,
      pinning.note
    ]
  })
  printTable({
    title: 'failover — against the anchors of the failover issue (same kind of machine, primary SIGKILLed under closed-loop load)',
    columns: ['setup', 'failed requests', 'traffic on the secondary after'],
    rows: [
      ['nginx (proxy_next_upstream + backup)', '0', '12 ms'],
      ['HAProxy (backup, check inter 500 fall 2, retry-on, redispatch)', '~50', '~1.5 s'],
      ['CloudFront + Route 53 (AWS hybrid failover)', 'stateless retries at once', '~70 s'],
      [`lattice-gateway (this run, median of ${results.length})`, fmt(mid.failed), Number.isNaN(mid.switchMs) ? 'never' : `${fmt(mid.switchMs)} ms`]
    ]
  })
}

async function oneRun (common: CommonArgs, opts: Options): Promise<RunResult> {
  const started: ChildHandle[] = []
  try {
    const primary = await startUpstream({ name: 'primary' })
    started.push(primary)
    const secondary = await startUpstream({ name: 'secondary' })
    started.push(secondary)
    const gw = await startGateway({
      server: { logLevel: 'info' },
      services: {
        items: {
          healthCheck: { intervalMs: opts.intervalMs },
          origins: { primary: primary.url, secondary: secondary.url }
        }
      },
      routes: [{ type: 'proxy', prefix: '/api', service: 'items', rewritePrefix: '' }]
    })
    started.push(gw)
    const url = `${gw.url}/api/items/1`
    if (common.warmup > 0) await load({ url, duration: common.warmup, connections: common.connections })

    // The timeline: one entry per answer, times in ms since the load started.
    const ends: number[] = []
    const latencies: number[] = []
    const ok: boolean[] = []
    let errors = 0
    let killPerf = Number.NaN
    let killEpoch = Number.NaN
    const t0 = performance.now()
    let finish: (err: Error | null, r: autocannon.Result) => void = () => {}
    const finished = new Promise<autocannon.Result>((resolve, reject) => { finish = (err, r) => err === null ? resolve(r) : reject(err) })
    const instance = autocannon({ url, connections: common.connections, duration: common.duration, timeout: 10 }, (err, r) => finish(err ?? null, r))
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      ends.push(performance.now() - t0)
      latencies.push(responseTime)
      ok.push(statusCode >= 200 && statusCode < 300)
    })
    instance.on('reqError', () => { errors++ })
    const killer = setTimeout(() => {
      killEpoch = Date.now()
      killPerf = performance.now() - t0
      primary.proc.kill('SIGKILL')
    }, opts.killAtS * 1000)
    const result = await finished
    clearTimeout(killer)

    const sw = await switchLine(gw.logFile)
    const switchMs = sw === null ? Number.NaN : sw.time - killEpoch
    const switchPerf = killPerf + (Number.isNaN(switchMs) ? Infinity : switchMs)
    const retried = await counter(gw.adminUrl, 'gateway_failovers_total', 'kind="retry"')

    const before: number[] = []
    const between: number[] = []
    const after: number[] = []
    let failed = errors
    let lastOk = Number.NaN
    let stallMs = 0
    let stallAtS = Number.NaN
    let killStallMs = 0
    for (let i = 0; i < ends.length; i++) {
      const start = ends[i]! - latencies[i]!
      if (!ok[i]) { failed++; continue }
      if (start < killPerf) before.push(latencies[i]!)
      else if (start < switchPerf) between.push(latencies[i]!)
      else after.push(latencies[i]!)
      if (!Number.isNaN(lastOk)) {
        const gap = ends[i]! - lastOk
        if (gap > stallMs) {
          stallMs = gap
          stallAtS = lastOk / 1000
        }
        if (ends[i]! >= killPerf && lastOk <= switchPerf && gap > killStallMs) killStallMs = gap
      }
      lastOk = ends[i]!
    }
    return {
      requests: ends.length,
      rps: ends.length / (result.duration > 0 ? result.duration : common.duration),
      failed,
      switchMs,
      switchBy: sw === null ? 'never' : /circuit breaker/.test(sw.reason) ? 'breaker' : 'health checks',
      retried,
      stallMs,
      killStallMs,
      stallAtS,
      killAtS: killPerf / 1000,
      p99Before: p99(before),
      p99Between: p99(between),
      p99After: p99(after),
      nBetween: between.length
    }
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

function p99 (xs: number[]): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)]!
}

/** The gateway's first switch to the secondary, from its pino log (epoch ms). */
async function switchLine (logFile: string): Promise<{ time: number, reason: string } | null> {
  const lines = createInterface({ input: createReadStream(logFile, 'utf8'), crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line.includes('"event":"failover"')) continue
    const l = JSON.parse(line) as { time: number, kind: string, to: string, reason: string }
    if (l.kind === 'switch' && l.to === 'secondary') {
      lines.close()
      return { time: l.time, reason: l.reason }
    }
  }
  return null
}

/** Sum of a Prometheus counter's series whose labels contain `match`. */
async function counter (adminUrl: string, name: string, match: string): Promise<number> {
  const res = await request(`${adminUrl}/metrics`)
  let sum = 0
  for (const line of (await res.body.text()).split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(match)) sum += Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return sum
}
