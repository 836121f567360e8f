/**
 * Aggregate scenario: one client request fanned out to three services
 * (product, review, inventory; 1 KB JSON each) and merged, measured in one
 * run two ways —
 *
 *   fastify+undici fan-out  bare Fastify 5, three parallel undici request()
 *                           calls, body.json(), merge, send (bench/aggregate-baseline.ts)
 *   lattice-gateway         the compiled gateway, a `type: aggregate` route,
 *                           every feature on
 *
 * The gateway runs as in production: info logging (one access line per
 * request, to a file), request ids to every section call, metrics per
 * section, a route deadline, the section size limit and JSON validation,
 * and every service with a primary and a secondary origin under active
 * health checks and the passive breaker (the secondaries only see probes).
 * Both targets fetch from the same three primaries.
 *
 *   npm run bench -- aggregate [--latency 0,20] [--light C] [--duration S] [--reps N] [--connections C] [--warmup S]
 *
 * `--latency` lists upstream answer delays in ms; each gets its own table.
 * For a delay above 0 a second table measures light load (`--light`
 * connections, default 4, 0 to skip): the aggregate's p50 should be near
 * one upstream's delay, not three (sections run in parallel).
 */
import { request } from 'undici'
import { PRODUCT_DETAILS_ROUTE } from '../src/demo/config.js'
import {
  fmt, loadTable, parseBenchArgs, pinning, startGateway, startHelper, startUpstream, runMatrix,
  goalLine, logBytesPerRequest, type ChildHandle, type CommonArgs, type MeasuredRow, type Target
} from './lib.js'

const BASELINE = 'fastify+undici fan-out'
const GATEWAY = 'lattice-gateway'
const SERVICES = ['product', 'review', 'inventory'] as const
const PATH = '/products/1/details'

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { latency: { type: 'string' }, light: { type: 'string' } })
  const raw = typeof values.latency === 'string' ? values.latency : '0,20'
  const latencies = raw.split(',').map((s) => Number(s.trim()))
  if (latencies.some((l) => !Number.isInteger(l) || l < 0 || l > 10_000)) throw new Error(`--latency must list integers in ms, e.g. 0,20 (got ${raw})`)
  const light = typeof values.light === 'string' ? Number(values.light) : 4
  if (!Number.isInteger(light) || light < 0 || light > 1000) throw new Error(`--light must be an integer number of connections, 0 to skip (got ${String(values.light)})`)
  for (const latencyMs of latencies) await oneLatency(latencyMs, light, common)
}

async function oneLatency (latencyMs: number, light: number, common: CommonArgs): Promise<void> {
  const started: ChildHandle[] = []
  try {
    const primaries: Record<string, string> = {}
    const services: Record<string, unknown> = {}
    const upstreamPids: number[] = []
    for (const name of SERVICES) {
      const primary = await startUpstream({ name: `${name}-primary`, latencyMs })
      started.push(primary)
      const secondary = await startUpstream({ name: `${name}-secondary`, latencyMs })
      started.push(secondary)
      primaries[name] = primary.url
      upstreamPids.push(primary.pid)
      services[name] = { origins: { primary: primary.url, secondary: secondary.url } }
    }
    const baseline = await startHelper('aggregate-baseline', ['--product', primaries.product!, '--review', primaries.review!, '--inventory', primaries.inventory!], { name: BASELINE })
    started.push(baseline)
    const gw = await startGateway({
      server: { logLevel: 'info' },
      services,
      routes: [PRODUCT_DETAILS_ROUTE]
    })
    started.push(gw)

    const targets: Target[] = [
      { name: BASELINE, url: `${baseline.url}${PATH}`, watch: [baseline.pid] },
      { name: GATEWAY, url: `${gw.url}${PATH}`, watch: [gw.pid] }
    ]
    // One request each first: a broken target must fail loudly, not show up as a fast row of errors.
    for (const t of targets) await expectAggregate(t.name, t.url)

    const log = logBytesPerRequest(gw, GATEWAY)
    const rows = await runMatrix(targets.map(log.wrap), common, { label: `aggregate ${latencyMs} ms` })
    const notes = [
      pinning.note,
      `${GATEWAY}: compiled dist/, info logging to a file (${fmt(log.perRequest(), 0)} log bytes per request), request ids, section metrics, 1500 ms route deadline, 1 MiB section limit with JSON validation, primary + secondary origins per service with health checks every 1 s`,
      `${BASELINE}: Fastify 5, logger off, undici's global agent, body.json() and JSON.stringify of the merged object, nothing else`,
      'each answer merges three 1 KB JSON sections'
    ]
    loadTable(`aggregate — three 1 KB JSON sections, upstreams answer after ${latencyMs} ms, ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, {
      baseline: BASELINE,
      notes: [...notes, goalLine(rows, BASELINE, GATEWAY, 1, false)]
    })

    if (latencyMs > 0 && light > 0) {
      const lightRows = await runMatrix(targets, { ...common, connections: light, warmup: 0 }, { label: `aggregate ${latencyMs} ms light` })
      const g = lightRows.find((r) => r.name === GATEWAY)?.result
      loadTable(`aggregate, light load — upstreams answer after ${latencyMs} ms, ${light} connections, ${common.duration} s × ${common.reps}`, lightRows, {
        baseline: BASELINE,
        notes: [
          ...notes.slice(0, 1),
          g === undefined ? '' : `${GATEWAY} p50 ${fmt(g.p50, 1)} ms against one section's ${latencyMs} ms (three in sequence would be ≥ ${latencyMs * 3} ms)`
        ]
      })
    }
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}


async function expectAggregate (name: string, url: string): Promise<void> {
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000 })
  const text = await res.body.text()
  let keys: string[] = []
  try { keys = Object.keys(JSON.parse(text) as object) } catch {}
  if (res.statusCode !== 200 || keys.join(',') !== 'product,reviews,inventory' || text.length < 3 * 1024) {
    throw new Error(`${name}: GET ${url} answered ${res.statusCode} with ${text.length} bytes, expected 200 with product, reviews and inventory: ${text.slice(0, 200)}`)
  }
}
