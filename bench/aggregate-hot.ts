/**
 * Aggregation v2 scenarios (SPEC §12), each measured in one run against
 * its own baseline —
 *
 * hot set: clients ask for the details of 20 products in turn (100
 * connections), three services answering after `--latency` ms (default
 * 20). Rows:
 *   fastify+undici fan-out   the hand-written baseline (bench/aggregate-baseline.ts)
 *   gateway, no coalescing   every section call sent (`coalesce: false`)
 *   gateway, coalescing      identical concurrent calls shared (the default)
 *   gateway, cache           every section cached (`ttlMs` 1 s) and coalesced
 *
 * slow tail: one gateway section over a service whose primary answers 5%
 * of requests after 200 ms (the rest at once) and whose secondary is
 * healthy; `--tail-connections` clients (default 10). p99 with and
 * without `hedgeAfterMs` (`--hedge`, default 20).
 *
 *   npm run bench -- aggregate-hot [--latency 20] [--hedge 20] [--tail-connections 10] [--duration S] [--reps N] [--connections C] [--warmup S]
 */
import { request } from 'undici'
import {
  fmt, loadTable, parseBenchArgs, pinning, startGateway, startHelper, startUpstream, runMatrix,
  type ChildHandle, type CommonArgs, type Target
} from './lib.js'

const BASELINE = 'fastify+undici fan-out'
const NO_COALESCE = 'gateway, no coalescing'
const COALESCE = 'gateway, coalescing'
const CACHE = 'gateway, cache + coalescing'
const SERVICES = ['product', 'review', 'inventory'] as const
const KEYS = Array.from({ length: 20 }, (_v, i) => `/products/${i + 1}/details`)

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { latency: { type: 'string' }, hedge: { type: 'string' }, 'tail-connections': { type: 'string' } })
  const latencyMs = Number(values.latency ?? 20)
  const hedgeMs = Number(values.hedge ?? 20)
  const tailConnections = Number(values['tail-connections'] ?? 10)
  for (const [k, v] of [['latency', latencyMs], ['hedge', hedgeMs], ['tail-connections', tailConnections]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 10_000) throw new Error(`--${k} must be a non-negative integer (got ${String(values[k])})`)
  }
  await hotSet(latencyMs, common)
  await slowTail(hedgeMs, { ...common, connections: tailConnections })
}

function route (section: Record<string, unknown>): Record<string, unknown> {
  return {
    type: 'aggregate',
    method: 'GET',
    path: '/products/:id/details',
    timeoutMs: 1500,
    sections: {
      product: { service: 'product', path: '/products/{id}', required: true, ...section },
      reviews: { service: 'review', path: '/reviews?productId={id}', ...section },
      inventory: { service: 'inventory', path: '/inventory/{id}', ...section }
    }
  }
}

async function hotSet (latencyMs: number, common: CommonArgs): Promise<void> {
  const started: ChildHandle[] = []
  try {
    const urls: Record<string, string> = {}
    const services: Record<string, unknown> = {}
    const upstreams = []
    for (const name of SERVICES) {
      const up = await startUpstream({ name, latencyMs })
      started.push(up)
      upstreams.push(up)
      urls[name] = up.url
      services[name] = { origins: { primary: up.url } }
    }
    const baseline = await startHelper('aggregate-baseline', ['--product', urls.product!, '--review', urls.review!, '--inventory', urls.inventory!], { name: BASELINE })
    started.push(baseline)
    const gateways: Array<[string, Record<string, unknown>]> = [
      [NO_COALESCE, { coalesce: false }],
      [COALESCE, {}],
      [CACHE, { cache: { ttlMs: 1000 } }]
    ]
    const targets: Target[] = [{ name: BASELINE, url: baseline.url + KEYS[0]!, paths: KEYS, watch: [baseline.pid] }]
    for (const [name, section] of gateways) {
      const gw = await startGateway({ server: { logLevel: 'info' }, services, routes: [route(section)] })
      started.push(gw)
      targets.push({ name, url: gw.url + KEYS[0]!, paths: KEYS, watch: [gw.pid] })
    }
    for (const t of targets) await expectAggregate(t.name, t.url)
    const before = await Promise.all(upstreams.map((u) => u.stats()))
    const rows = await runMatrix(targets, common, { label: 'aggregate hot set' })
    const after = await Promise.all(upstreams.map((u) => u.stats()))
    const calls = after.reduce((a, s, i) => a + s.requests - before[i]!.requests, 0)
    const total = rows.reduce((a, r) => a + r.result.requests, 0)
    const b = rows.find((r) => r.name === BASELINE)!.result.rps
    const best = Math.max(...rows.filter((r) => r.name === COALESCE || r.name === CACHE).map((r) => r.result.rps))
    loadTable(`aggregate hot set — 20 product ids in turn, three 1 KB sections answering after ${latencyMs} ms, ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, {
      baseline: BASELINE,
      notes: [
        pinning.note,
        'a 2-core machine shared with other work while measured: compare rows of one run, not runs',
        `upstream calls over all measured runs: ${fmt(calls)} for ${fmt(total)} client requests (every target; the baseline makes 3 per request)`,
        `goal (≥ 3× ${BASELINE} req/s with cache/coalescing on): ${(best / b).toFixed(2)}× — ${best / b >= 3 ? 'met' : 'not met'}`
      ]
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

async function slowTail (hedgeMs: number, common: CommonArgs): Promise<void> {
  const started: ChildHandle[] = []
  try {
    const primary = await startUpstream({ name: 'product-primary', latencyMs: 0, tail: { every: 20, ms: 200 } })
    const secondary = await startUpstream({ name: 'product-secondary', latencyMs: 0 })
    started.push(primary, secondary)
    const services = { product: { timeoutMs: 2000, origins: { primary: primary.url, secondary: secondary.url } } }
    const one = (section: Record<string, unknown>): Record<string, unknown> => ({
      type: 'aggregate', method: 'GET', path: '/products/:id/details', timeoutMs: 1500,
      sections: { product: { service: 'product', path: '/products/{id}', required: true, coalesce: false, ...section } }
    })
    const plain = await startGateway({ server: { logLevel: 'info' }, services, routes: [one({})] })
    started.push(plain)
    const hedged = await startGateway({ server: { logLevel: 'info' }, services, routes: [one({ hedgeAfterMs: hedgeMs })] })
    started.push(hedged)
    const NO_HEDGE = 'gateway, no hedging'
    const HEDGE = `gateway, hedgeAfterMs ${hedgeMs}`
    const rows = await runMatrix([
      { name: NO_HEDGE, url: plain.url + KEYS[0]!, paths: KEYS, watch: [plain.pid] },
      { name: HEDGE, url: hedged.url + KEYS[0]!, paths: KEYS, watch: [hedged.pid] }
    ], common, { label: 'slow tail' })
    const a = rows.find((r) => r.name === NO_HEDGE)!.result
    const h = rows.find((r) => r.name === HEDGE)!.result
    loadTable(`slow tail — one section; its primary answers 5% of requests after 200 ms, its secondary at once; ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, {
      baseline: NO_HEDGE,
      notes: [
        pinning.note,
        'a 2-core machine shared with other work while measured',
        `goal (hedging cuts p99 ≥ 4×): ${fmt(a.p99)} ms → ${fmt(h.p99)} ms = ${(a.p99 / Math.max(h.p99, 0.001)).toFixed(1)}× — ${a.p99 / Math.max(h.p99, 0.001) >= 4 ? 'met' : 'not met'}`
      ]
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

async function expectAggregate (name: string, url: string): Promise<void> {
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000 })
  const text = await res.body.text()
  if (res.statusCode !== 200 || !text.startsWith('{"product":')) throw new Error(`${name}: GET ${url} answered ${res.statusCode}: ${text.slice(0, 200)}`)
}
