/**
 * Rollout scenario (SPEC §11): closed-loop GET load through the compiled
 * gateway while a rollout moves `review` from blue to green.
 *
 *   npm run bench -- rollout [--duration S] [--reps N] [--connections C] [--warmup S]
 *                            [--interval MS] [--min-requests N] [--fail-rate R] [--p99-ratio X]
 *
 * Three tables:
 * 1. Cost on the request path, blue and green both healthy at 50/50:
 *    no rollout (plain weights) vs a rollout active (paused at 50: every
 *    request recorded in the window, shield armed). Medians over `--reps`.
 * 2. A bad candidate (green answers 503 to `--fail-rate` of requests):
 *    client-visible failures with the shield on vs off, the time from the
 *    start request to the rollback, and the shield's own cost (requests
 *    re-sent to blue).
 * 3. A good candidate: the rollout completes; per step, the candidate's
 *    and the baseline's p99 as the analysis measured them, and the
 *    clients' latency during the step.
 *
 * The gateway and the upstreams are pinned to the server CPU like every
 * other scenario; the load generator to its own.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import {
  fmt, load, measure, median, parseBenchArgs, pinning, printTable, ratio, runMatrix, startGateway, startUpstream,
  type Cell, type GatewayProcess, type LoadResult
} from './lib.js'

const TOKEN = 'bench-rollout-token'

interface RolloutState {
  status: string
  step: number
  weight: number
  reason: string | null
  startedAt: string
  updatedAt: string
  analyses: Array<{ step: number, passed: boolean, reason: string, candidate: { requests: number, failures: number, p99Ms: number | null }, baseline: { requests: number, p99Ms: number | null } }>
}

async function admin (gw: GatewayProcess, method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<{ status: number, body: unknown }> {
  const res = await request(`${gw.adminUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  return { status: res.statusCode, body: await res.body.json() }
}

async function state (gw: GatewayProcess): Promise<RolloutState | null> {
  const r = await admin(gw, 'GET', '/admin/services/review/rollout')
  return r.status === 200 ? r.body as RolloutState : null
}

/** Ends any active rollout and puts all traffic back on blue (or the given weights). */
async function reset (gw: GatewayProcess, weights: Record<string, number> = { blue: 100, green: 0 }): Promise<void> {
  const s = await state(gw)
  if (s !== null && (s.status === 'running' || s.status === 'paused')) await admin(gw, 'POST', '/admin/services/review/rollout/abort')
  const r = await admin(gw, 'PUT', '/admin/services/review/traffic', weights)
  if (r.status !== 200) throw new Error(`PUT traffic answered ${r.status}: ${JSON.stringify(r.body)}`)
}

async function start (gw: GatewayProcess, body: Record<string, unknown>): Promise<void> {
  const r = await admin(gw, 'POST', '/admin/services/review/rollouts', { to: 'green', ...body })
  if (r.status !== 201) throw new Error(`start answered ${r.status}: ${JSON.stringify(r.body)}`)
}

/** Polls until the rollout is no longer running (bounded by `limitMs`); resolves with its state and when it was seen ended. */
async function untilEnded (gw: GatewayProcess, limitMs: number): Promise<{ state: RolloutState, at: number }> {
  const deadline = Date.now() + limitMs
  for (;;) {
    const s = await state(gw)
    if (s !== null && s.status !== 'running') return { state: s, at: Date.now() }
    if (Date.now() > deadline) throw new Error(`the rollout did not end within ${limitMs} ms: ${JSON.stringify(s)}`)
    await sleep(25)
  }
}

async function metric (gw: GatewayProcess, name: string): Promise<number> {
  const res = await request(`${gw.adminUrl}/metrics`)
  const text = await res.body.text()
  let sum = 0
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1))
  return sum
}

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, {
    interval: { type: 'string', default: '3000' },
    'min-requests': { type: 'string', default: '200' },
    'fail-rate': { type: 'string', default: '0.3' },
    'p99-ratio': { type: 'string', default: '1.5' }
  })
  const interval = Number(values.interval)
  const minRequests = Number(values['min-requests'])
  const failRate = Number(values['fail-rate'])
  const p99Ratio = Number(values['p99-ratio'])

  const blue = await startUpstream({ name: 'blue' })
  const green = await startUpstream({ name: 'green' })
  const gw = await startGateway({
    admin: { token: TOKEN },
    services: {
      review: {
        timeoutMs: 2000,
        healthCheck: { intervalMs: 500, timeoutMs: 400 },
        deployments: { blue: { primary: blue.url }, green: { primary: green.url } },
        traffic: { blue: 100, green: 0 },
        preview: { header: 'x-preview-deployment' }
      }
    },
    routes: [{ type: 'proxy', prefix: '/api/reviews', service: 'review', rewritePrefix: '/reviews' }]
  })
  const url = `${gw.url}/api/reviews/1`
  const busy = `machine shared with other work while measured (${pinning.note}): compare ratios within this run, not absolute figures`

  // ---- 1. cost on the request path -------------------------------------
  const rows = await runMatrix([
    { name: 'no rollout (50/50 weights)', url, watch: [gw.pid], before: () => reset(gw, { blue: 50, green: 50 }) },
    {
      name: 'rollout active at 50 (window + shield armed)',
      url,
      watch: [gw.pid],
      before: async () => {
        await reset(gw)
        await start(gw, { steps: [50, 100], stepIntervalMs: 3_600_000 })
        await admin(gw, 'POST', '/admin/services/review/rollout/pause')
      }
    }
  ], common, { label: 'rollout cost' })
  const base = rows[0]!.result
  printTable({
    title: `Rollout: request-path cost, blue and green healthy (${common.connections} connections, ${common.duration}s x ${common.reps})`,
    columns: ['case', 'req/s', 'vs none', 'p50 ms', 'p99 ms', 'p99 vs none', 'CPU µs/req', 'vs none', 'non-2xx'],
    rows: rows.map((r) => [r.name, r.result.rps, ratio(r.result.rps, base.rps), fmt(r.result.p50, 2), fmt(r.result.p99, 2), ratio(r.result.p99, base.p99), fmt(r.result.cpuUsPerReq, 1), ratio(r.result.cpuUsPerReq, base.cpuUsPerReq), r.result.non2xx]),
    notes: [busy]
  })

  // ---- 2. a bad candidate: shield on vs off ------------------------------
  const bad: Cell[][] = []
  for (const shield of [true, false]) {
    const failures: number[] = []
    const totals: number[] = []
    const toRollback: number[] = []
    const shielded: number[] = []
    let reason = ''
    for (let rep = 1; rep <= common.reps; rep++) {
      await reset(gw)
      await green.control({ failRate })
      const before = await metric(gw, 'gateway_rollout_shielded_total')
      // Load for at most the time a rollback may take (first analysis, plus 3 waits), measured to the rollback.
      const loading = load({ url, duration: Math.ceil((interval * 5) / 1000) + 2, connections: common.connections })
      await sleep(500)
      const t0 = Date.now()
      await start(gw, { steps: [10, 50, 100], stepIntervalMs: interval, analysis: { minRequests }, shield })
      const end = await untilEnded(gw, interval * 6)
      const r: LoadResult = await loading
      toRollback.push(end.at - t0)
      failures.push(r.non2xx + r.errors)
      totals.push(r.requests)
      shielded.push((await metric(gw, 'gateway_rollout_shielded_total')) - before)
      reason = `${end.state.status}: ${end.state.reason ?? ''}`
      process.stderr.write(`bad candidate, shield ${shield ? 'on' : 'off'}, rep ${rep}: ${end.state.status} after ${end.at - t0} ms, client failures ${r.non2xx + r.errors}/${r.requests}\n`)
      await green.control({ failRate: 0 })
    }
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0)
    bad.push([`shield ${shield ? 'on' : 'off'}`, sum(failures), sum(totals), `${fmt((100 * sum(failures)) / Math.max(1, sum(totals)), 3)} %`, fmt(median(toRollback), 0), fmt(median(toRollback) / interval, 2), sum(shielded), reason])
  }
  printTable({
    title: `Rollout: bad candidate (green fails ${failRate * 100} %), steps 10/50/100, interval ${interval} ms, minRequests ${minRequests} (${common.reps} reps, ${common.connections} connections)`,
    columns: ['case', 'client failures', 'requests', 'failed share', 'start -> rollback ms (median)', 'in intervals', 're-sent to blue', 'decision (last rep)'],
    rows: bad,
    notes: ['client failures: non-2xx answers and connection errors seen by the load generator, the whole run (before, during and after the rollback)', busy]
  })

  // ---- 3. a good candidate: completes; latency per step -------------------
  await reset(gw)
  // Warm the candidate's connections through the preview header first, as an
  // operator would check it: otherwise its first step pays for new upstream
  // connections that the baseline opened long ago, and the p99 ratio says so.
  await load({ url, duration: 2, connections: common.connections, headers: { 'x-preview-deployment': 'green' } })
  const loading = measure({ url, duration: Math.ceil((interval * 3 * 2) / 1000) + 3, connections: common.connections, watch: [gw.pid] })
  await sleep(500)
  const t0 = Date.now()
  await start(gw, { steps: [10, 50, 100], stepIntervalMs: interval, analysis: { minRequests, maxP99Ratio: p99Ratio } })
  const end = await untilEnded(gw, interval * 15)
  const whole = await loading
  const good: Cell[][] = end.state.analyses.map((a) => [
    `step ${a.step + 1} (${[10, 50, 100][a.step]} % green)`,
    a.candidate.requests,
    fmt(a.candidate.p99Ms ?? Number.NaN, 2),
    a.baseline.requests,
    fmt(a.baseline.p99Ms ?? Number.NaN, 2),
    a.candidate.p99Ms !== null && a.baseline.p99Ms !== null && a.baseline.requests >= minRequests ? ratio(a.candidate.p99Ms, a.baseline.p99Ms) : '-',
    a.passed ? 'passed' : 'failed'
  ])
  printTable({
    title: `Rollout: good candidate (warmed through the preview header), steps 10/50/100, interval ${interval} ms, maxP99Ratio ${p99Ratio}: ${end.state.status} in ${fmt(end.at - t0)} ms`,
    columns: ['step', 'green requests', 'green p99 ms', 'blue requests', 'blue p99 ms', 'green/blue p99', 'analysis'],
    rows: good,
    notes: [
      `clients over the whole run: ${fmt(whole.rps)} req/s, p50 ${fmt(whole.p50, 2)} ms, p99 ${fmt(whole.p99, 2)} ms, non-2xx ${whole.non2xx}, errors ${whole.errors}`,
      'p99s are the gateway\'s own window histograms (upper bound of a log-linear bucket, <= 12.5 % high)',
      busy
    ]
  })
}
