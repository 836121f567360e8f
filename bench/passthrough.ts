/**
 * Pass-through scenario: the same 1 KB JSON upstream reached three ways,
 * measured in one run —
 *
 *   direct              autocannon -> upstream
 *   fastify+http-proxy  -> bare Fastify 5 + @fastify/http-proxy (bench/http-proxy-baseline.ts)
 *   lattice-gateway     -> the compiled gateway, a proxy route, every feature on
 *
 * The gateway runs as in production: info logging (one access line per
 * request, to a file), request ids, metrics, and a service with a primary
 * and a secondary origin under active health checks and the passive
 * breaker. The secondary is a second upstream that only sees probes.
 *
 *   npm run bench -- passthrough [--latency 0,20] [--light 10] [--duration S] [--reps N] [--connections C] [--warmup S]
 *
 * `--latency` lists upstream answer delays in ms; each gets its own table
 * (at `--connections`, 100 by default: the 20 ms table is the one where
 * requests queue). `--light C` adds a table at C connections and 20 ms
 * with ratios against the direct path (0: none).
 */
import { request } from 'undici'
import {
  fmt, loadTable, parseBenchArgs, pinning, startGateway, startHelper, startUpstream, runMatrix,
  goalLine, logBytesPerRequest, type ChildHandle, type CommonArgs, type MeasuredRow, type Target
} from './lib.js'

const BASELINE = 'fastify+http-proxy'
const GATEWAY = 'lattice-gateway'

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { latency: { type: 'string' }, light: { type: 'string' } })
  const raw = typeof values.latency === 'string' ? values.latency : '0,20'
  const latencies = raw.split(',').map((s) => Number(s.trim()))
  if (latencies.some((l) => !Number.isInteger(l) || l < 0 || l > 10_000)) throw new Error(`--latency must list integers in ms, e.g. 0,20 (got ${raw})`)
  for (const latencyMs of latencies) await oneLatency(latencyMs, common)
  // Light load, where most production gateways run: CPU per request and p99
  // against the direct path (the ratio column's baseline), http-proxy beside.
  const light = Number(typeof values.light === 'string' ? values.light : '10')
  if (!Number.isInteger(light) || light < 0 || light > 10_000) throw new Error(`--light must be a connection count (got ${String(values.light)})`)
  if (light > 0) await oneLatency(20, { ...common, connections: light }, 'direct')
}

async function oneLatency (latencyMs: number, common: CommonArgs, ratioBase = BASELINE): Promise<void> {
  const started: ChildHandle[] = []
  try {
    const primary = await startUpstream({ name: 'primary', latencyMs })
    started.push(primary)
    const secondary = await startUpstream({ name: 'secondary', latencyMs })
    started.push(secondary)
    const baseline = await startHelper('http-proxy-baseline', ['--upstream', primary.url], { name: BASELINE })
    started.push(baseline)
    const gw = await startGateway({
      server: { logLevel: 'info' },
      services: { items: { origins: { primary: primary.url, secondary: secondary.url } } },
      routes: [{ type: 'proxy', prefix: '/api', service: 'items', rewritePrefix: '' }]
    })
    started.push(gw)

    const targets = [
      { name: 'direct', url: `${primary.url}/items/1`, watch: [primary.pid] },
      { name: BASELINE, url: `${baseline.url}/api/items/1`, watch: [baseline.pid] },
      { name: GATEWAY, url: `${gw.url}/api/items/1`, watch: [gw.pid] }
    ]
    // One request each first: a misrouted target must fail loudly, not show up as a fast row of 404s.
    for (const t of targets) await expectDocument(t.name, t.url)

    const log = logBytesPerRequest(gw, GATEWAY)
    const rows = await runMatrix(targets.map(log.wrap), common, { label: `passthrough ${latencyMs} ms` })

    loadTable(`passthrough${ratioBase === 'direct' ? ' (light load)' : ''} — 1 KB JSON, upstream answers after ${latencyMs} ms, ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, {
      baseline: ratioBase,
      notes: [
        pinning.note,
        `${GATEWAY}: compiled dist/, info logging to a file (${fmt(log.perRequest(), 0)} log bytes per request), request ids, metrics, primary + secondary origins with health checks every 1 s`,
        `${BASELINE}: Fastify 5 + @fastify/http-proxy, logger off, nothing else`,
        ...(latencyMs === 0 && ratioBase === BASELINE ? [goalLine(rows, BASELINE, GATEWAY, 1.3, true)] : []),
        ...(ratioBase === 'direct' ? ['ratios against the direct path: the CPU a proxy adds per request, and the p99 it adds, at light load'] : [])
      ]
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}


async function expectDocument (name: string, url: string): Promise<void> {
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000 })
  const body = await res.body.text()
  if (res.statusCode !== 200 || body.length !== 1024) {
    throw new Error(`${name}: GET ${url} answered ${res.statusCode} with ${body.length} bytes, expected 200 with the 1 KB document: ${body.slice(0, 200)}`)
  }
}
