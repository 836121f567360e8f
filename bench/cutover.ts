/**
 * Cutover scenario: closed-loop load through the compiled gateway while an
 * operator shifts a service's weights through the admin API,
 * 100/0 -> 50/50 -> 0/100 -> 100/0 (blue/green), each phase held for
 * `--duration` seconds. It reports, per phase, the failed responses and the
 * share each colour actually served, so "no failed request during a
 * cutover" and "the split follows the weights" are numbers, not claims.
 *
 *   npm run bench -- cutover [--duration S] [--reps N] [--connections C] [--warmup S]
 *                            [--mode random,sticky] [--users N] [--latency MS]
 *
 * Modes (each gets its own table; default both):
 * - random: requests carry no sticky key, so each is placed by weight.
 * - sticky: requests carry `x-user-id` from a pool of `--users` users; the
 *   table adds how many users moved at each shift, how many moved the
 *   wrong way (green -> blue while green's weight rose, or back) and how
 *   many were served two colours inside one phase. The last two must be 0.
 *
 * Blue and green are bench upstreams (bench/upstream-server.ts) whose
 * `x-origin` header names them. `--connections` workers each keep one
 * request in flight (closed loop) over a keep-alive pool. A response counts
 * in a phase when it started after that phase's PUT was answered and ended
 * before the next PUT was sent; the ones that straddle a PUT are the
 * "during shifts" row (they may go either way, but must not fail).
 * Figures are totals over `--reps` full cycles (req/s and latency: medians
 * over the cycles).
 */
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool, request } from 'undici'
import {
  fmt, median, monitor, parseBenchArgs, pinning, printTable, startGateway, startUpstream,
  type Cell, type ChildHandle, type CommonArgs
} from './lib.js'

const TOKEN = 'bench-cutover-token'
const PHASES = [{ blue: 100, green: 0 }, { blue: 50, green: 50 }, { blue: 0, green: 100 }, { blue: 100, green: 0 }] as const
const MODES = ['random', 'sticky'] as const
type Mode = typeof MODES[number]

/** What one phase (or the straddling requests) saw, over every cycle. */
interface Tally {
  requests: number
  blue: number
  green: number
  /** Non-2xx answers. */
  non2xx: number
  /** Connection errors and timeouts (no answer at all). */
  errors: number
  /** Answered by neither colour (should never happen). */
  other: number
  latencies: number[]
  /** Per cycle: requests / phase seconds. */
  rps: number[]
  /** Per cycle: latency p50 and p99, ms. */
  p50: number[]
  p99: number[]
  /** Sticky mode: each user's colours in this phase, this cycle. */
  users: Map<string, Set<string>>
  /** Sticky mode, over the cycles: users whose colour changed entering this phase; those that moved the wrong way; users served two colours inside it. */
  moved: number
  wrongWay: number
  split: number
}

const tally = (): Tally => ({ requests: 0, blue: 0, green: 0, non2xx: 0, errors: 0, other: 0, latencies: [], rps: [], p50: [], p99: [], users: new Map(), moved: 0, wrongWay: 0, split: 0 })

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, {
    mode: { type: 'string' },
    users: { type: 'string' },
    latency: { type: 'string' }
  })
  const modes = (typeof values.mode === 'string' ? values.mode : MODES.join(',')).split(',').map((m) => m.trim())
  for (const m of modes) if (!(MODES as readonly string[]).includes(m)) throw new Error(`--mode must list ${MODES.join(' and/or ')} (got ${m})`)
  const users = intFlag(values.users, 'users', 1000, 1, 1_000_000)
  const latencyMs = intFlag(values.latency, 'latency', 1, 0, 10_000)

  const started: ChildHandle[] = []
  try {
    const blue = await startUpstream({ name: 'blue', latencyMs })
    started.push(blue)
    const green = await startUpstream({ name: 'green', latencyMs })
    started.push(green)
    const gw = await startGateway({
      server: { logLevel: 'info' },
      admin: { token: TOKEN },
      services: {
        review: {
          deployments: { blue: { primary: blue.url }, green: { primary: green.url } },
          traffic: { ...PHASES[0] },
          sticky: { header: 'x-user-id' }
        }
      },
      routes: [{ type: 'proxy', prefix: '/api', service: 'review', rewritePrefix: '' }]
    })
    started.push(gw)
    for (const mode of modes as Mode[]) await oneMode(mode, gw, common, users, latencyMs)
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

function intFlag (raw: string | boolean | undefined, name: string, dflt: number, min: number, max: number): number {
  if (raw === undefined) return dflt
  const n = Number(raw)
  if (typeof raw !== 'string' || !Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer between ${min} and ${max} (got ${String(raw)})`)
  return n
}

async function putTraffic (adminUrl: string, weights: Record<string, number>): Promise<number> {
  const t0 = performance.now()
  const res = await request(`${adminUrl}/admin/services/review/traffic`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(weights)
  })
  const text = await res.body.text()
  if (res.statusCode !== 200) throw new Error(`PUT traffic ${JSON.stringify(weights)} answered ${res.statusCode}: ${text}`)
  return performance.now() - t0
}

async function oneMode (mode: Mode, gw: { url: string, adminUrl: string, pid: number, logFile: string }, common: CommonArgs, users: number, latencyMs: number): Promise<void> {
  const client = new Pool(gw.url, { connections: common.connections, pipelining: 1 })
  const phases = PHASES.map(tally)
  const straddling = tally()
  const putMs: number[] = []
  // The phase whose weights are settled (its PUT answered, the next not yet
  // sent); null while a PUT is in flight. `putsSent` changes when one is sent.
  let current: Tally | null = null
  let putsSent = 0
  let stop = false
  let nextUser = 0
  /** Why requests failed: `503 GW_…` or the client error code, with counts. */
  const reasons = new Map<string, number>()

  const worker = async (): Promise<void> => {
    while (!stop) {
      const phase = current
      const puts = putsSent
      const user = mode === 'sticky' ? `user-${nextUser++ % users}` : null
      const t0 = performance.now()
      let colour: string | null = null
      let status = 0
      let reason: string | null = null
      try {
        const res = await client.request({ method: 'GET', path: '/api/reviews/1', headers: user === null ? {} : { 'x-user-id': user } })
        status = res.statusCode
        const origin = res.headers['x-origin']
        colour = typeof origin === 'string' ? origin : null
        if (status >= 200 && status < 300) await res.body.dump()
        else reason = `${status} ${await res.body.text().then((b) => (JSON.parse(b) as { code?: string, message?: string }).message ?? b, () => '')}`
      } catch (err) {
        status = 0
        reason = `client: ${(err as { code?: string }).code ?? (err as Error).message}`
      }
      if (reason !== null && phase !== warm) reasons.set(reason, (reasons.get(reason) ?? 0) + 1)
      if (phase === warm) continue
      // No PUT between start and end: the weights never changed under this request.
      const t = phase !== null && puts === putsSent ? phase : straddling
      t.requests++
      if (status === 0) t.errors++
      else if (status < 200 || status >= 300) t.non2xx++
      else {
        t.latencies.push(performance.now() - t0)
        if (colour === 'blue') t.blue++
        else if (colour === 'green') t.green++
        else t.other++
        if (user !== null && t !== straddling) {
          let s = t.users.get(user)
          if (s === undefined) t.users.set(user, s = new Set())
          s.add(colour ?? '?')
        }
      }
    }
  }

  const logged0 = await countTrafficLines(gw.logFile)
  const counted0 = await trafficChangesCounted(gw.adminUrl)
  // Warm-up traffic goes to a tally nobody reads.
  const warm = tally()
  current = warm
  const mon = monitor([gw.pid])
  const workers = Array.from({ length: common.connections }, worker)
  try {
    if (common.warmup > 0) {
      process.stderr.write(`cutover ${mode}: warm-up ${common.warmup}s at ${JSON.stringify(PHASES[0])}\n`)
      await sleep(common.warmup * 1000)
    }
    for (let rep = 1; rep <= common.reps; rep++) {
      let previous: Map<string, Set<string>> | null = null
      // Every cycle starts at the first phase's weights (the previous one ended there).
      for (const [i, weights] of PHASES.entries()) {
        const phase = phases[i]!
        phase.latencies = []
        phase.users = new Map()
        if (i > 0) {
          current = null
          putsSent++
          putMs.push(await putTraffic(gw.adminUrl, weights))
        }
        current = phase
        const before = phase.requests
        const t0 = performance.now()
        await sleep(common.duration * 1000)
        phase.rps.push((phase.requests - before) / ((performance.now() - t0) / 1000))
        const lat = [...phase.latencies].sort((a, b) => a - b)
        phase.p50.push(percentile(lat, 0.5))
        phase.p99.push(percentile(lat, 0.99))
        if (mode === 'sticky') {
          for (const s of phase.users.values()) if (s.size > 1) phase.split++
          if (previous !== null) compareCohorts(previous, phase, PHASES[i - 1]!.green, weights.green)
          previous = phase.users
        }
      }
      process.stderr.write(`cutover ${mode}: cycle ${rep}/${common.reps} done\n`)
    }
  } finally {
    stop = true
    await Promise.all(workers)
    await client.close()
  }
  const usage = mon.stop().get(gw.pid)
  const logged = await countTrafficLines(gw.logFile) - logged0
  const counted = await trafficChangesCounted(gw.adminUrl) - counted0

  const all = [...phases, straddling]
  const failed = all.reduce((n, t) => n + t.non2xx + t.errors, 0)
  const total = all.reduce((n, t) => n + t.requests, 0)
  const row = (label: string, weights: string, t: Tally, expectedGreen: number | null): Cell[] => {
    const served = t.blue + t.green
    const cells: Cell[] = [
      label,
      weights,
      fmt(t.requests),
      t.rps.length === 0 ? '-' : fmt(median(t.rps)),
      fmt(t.non2xx + t.errors),
      served === 0 ? '-' : `${fmt((100 * t.green) / served, 1)}%`,
      expectedGreen === null ? 'either' : `${expectedGreen}%`,
      t.p50.length === 0 ? '-' : fmt(median(t.p50), 1),
      t.p99.length === 0 ? '-' : fmt(median(t.p99), 1)
    ]
    if (mode === 'sticky') cells.push(t === straddling || t === phases[0] ? '-' : fmt(t.moved), t === straddling || t === phases[0] ? '-' : fmt(t.wrongWay), t === straddling ? '-' : fmt(t.split))
    return cells
  }
  const columns = ['phase', 'blue/green', 'requests', 'req/s', 'failed', 'green served', 'green weight', 'p50 ms', 'p99 ms']
  if (mode === 'sticky') columns.push('users moved', 'wrong way', 'split')
  printTable({
    title: `cutover (${mode === 'random' ? 'no sticky key: placed by weight' : `sticky: x-user-id over ${fmt(users)} users`}) — ${common.connections} closed-loop connections, ${common.duration} s per phase × ${common.reps} cycle(s), upstreams answer after ${latencyMs} ms`,
    columns,
    rows: [
      ...PHASES.map((w, i) => row(String(i + 1), `${w.blue}/${w.green}`, phases[i]!, w.green)),
      row('during shifts', '', straddling, null)
    ],
    notes: [
      `failed = non-2xx answers + connection errors/timeouts; ${fmt(failed)} of ${fmt(total)} requests failed in total`,
      'a phase counts requests that started after its PUT was answered and ended before the next PUT; "during shifts" are the ones that straddled a PUT',
      `admin PUT answered in ${fmt(median(putMs), 1)} ms (median of ${putMs.length}); ${putMs.length} shifts: ${logged} traffic log lines, ${counted} increments of gateway_traffic_changes_total (one per deployment whose weight moved: 2 per shift)`,
      ...[...reasons].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([r, n]) => `failure: ${n} × ${r}`),
      ...(mode === 'sticky' ? ['users moved: distinct users whose colour differs from the previous phase; wrong way: moved against the weight change (must be 0); split: served both colours inside one phase (must be 0)'] : []),
      `gateway peak RSS ${usage === undefined ? '-' : fmt(usage.peakRss / 1048576, 1)} MB; load generator: an undici closed loop in the bench process; ${pinning.note}`
    ]
  })
}

/** Sticky mode: compares each user's colour with the previous phase's. */
function compareCohorts (previous: Map<string, Set<string>>, phase: Tally, greenBefore: number, greenAfter: number): void {
  for (const [user, now] of phase.users) {
    const was = previous.get(user)
    if (was === undefined || was.size !== 1 || now.size !== 1) continue
    const a = [...was][0]
    const b = [...now][0]
    if (a === b) continue
    phase.moved++
    // Green rising may only move users blue -> green; falling only green -> blue.
    if ((greenAfter > greenBefore && a === 'green') || (greenAfter < greenBefore && a === 'blue') || greenAfter === greenBefore) phase.wrongWay++
  }
}

function percentile (sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}

/** Lines with `"event":"traffic"` in the gateway's log. */
async function countTrafficLines (file: string): Promise<number> {
  let n = 0
  const rl = createInterface({ input: createReadStream(file), crlfDelay: Infinity })
  for await (const line of rl) if (line.includes('"event":"traffic"')) n++
  return n
}

/** Sum of gateway_traffic_changes_total for the service. */
async function trafficChangesCounted (adminUrl: string): Promise<number> {
  const res = await request(`${adminUrl}/metrics`)
  let n = 0
  for (const line of (await res.body.text()).split('\n')) {
    if (line.startsWith('gateway_traffic_changes_total{') && line.includes('service="review"')) n += Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return n
}
