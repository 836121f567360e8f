/**
 * Tracing scenario (SPEC §13): what OpenTelemetry tracing costs a
 * pass-through and an aggregate request, measured in one run —
 *
 *   tracing off      the gateway as shipped, no `tracing` key
 *   tracing 0.01     tracing.sampleRatio 0.01: every request gets span ids
 *                    and passes traceparent upstream; 1 in 100 is recorded
 *   tracing 1.0      every request recorded and exported (SERVER + CLIENT
 *                    spans, plus a section span per section on aggregates)
 *   today            (with --today-dist DIR) the same config on another
 *                    build, e.g. main before tracing existed: shows that
 *                    "off" costs what the gateway cost before
 *
 * The traced gateways export OTLP/HTTP JSON to a local sink
 * (bench/otlp-sink.ts) that reads and acknowledges every export. Every
 * gateway runs as in production (info logging to a file, metrics, primary
 * + secondary origins under health checks); only one is under load at a
 * time, and reps are interleaved.
 *
 *   npm run bench -- tracing [--only passthrough|aggregate] [--today-dist DIR] [--duration S] [--reps N] [--connections C] [--warmup S]
 *
 * Goals (the tracing issue): off = today; 0.01 costs ≤ 3% of req/s; 1.0 ≤ 15%.
 */
import { join } from 'node:path'
import { request } from 'undici'
import { PRODUCT_DETAILS_ROUTE } from '../src/demo/config.js'
import {
  loadTable, parseBenchArgs, pinning, startGateway, startHelper, startUpstream, runMatrix,
  type ChildHandle, type CommonArgs, type GatewayProcess, type MeasuredRow, type Target
} from './lib.js'

const OFF = 'tracing off'
const LOW = 'tracing 0.01'
const FULL = 'tracing 1.0'
const TODAY = 'today (other build)'

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { only: { type: 'string' }, 'today-dist': { type: 'string' } })
  const only = typeof values.only === 'string' ? values.only : null
  if (only !== null && only !== 'passthrough' && only !== 'aggregate') throw new Error(`--only must be passthrough or aggregate (got ${only})`)
  const todayMain = typeof values['today-dist'] === 'string' ? join(values['today-dist'], 'src', 'main.js') : null
  if (only !== 'aggregate') await scenario('passthrough', common, todayMain)
  if (only !== 'passthrough') await scenario('aggregate', common, todayMain)
}

async function scenario (kind: 'passthrough' | 'aggregate', common: CommonArgs, todayMain: string | null): Promise<void> {
  const started: ChildHandle[] = []
  try {
    // The sink stands for a collector on another machine: not pinned to the servers' core.
    const sink = await startHelper('otlp-sink', [], { name: 'otlp-sink', pin: false })
    started.push(sink)
    const services: Record<string, unknown> = {}
    const names = kind === 'passthrough' ? ['items'] : ['product', 'review', 'inventory']
    for (const name of names) {
      const primary = await startUpstream({ name: `${name}-primary` })
      const secondary = await startUpstream({ name: `${name}-secondary` })
      started.push(primary, secondary)
      services[name] = { origins: { primary: primary.url, secondary: secondary.url } }
    }
    const routes = kind === 'passthrough' ? [{ type: 'proxy', prefix: '/api', service: 'items', rewritePrefix: '' }] : [PRODUCT_DETAILS_ROUTE]
    const path = kind === 'passthrough' ? '/api/items/1' : '/products/1/details'
    const base = { server: { logLevel: 'info' }, services, routes }
    const gateways: Array<{ name: string, gw: GatewayProcess }> = []
    const add = async (name: string, config: Record<string, unknown>, main?: string): Promise<void> => {
      const gw = await startGateway(config, main === undefined ? {} : { main })
      started.push(gw)
      gateways.push({ name, gw })
    }
    if (todayMain !== null) await add(TODAY, base, todayMain)
    await add(OFF, base)
    await add(LOW, { ...base, tracing: { otlpEndpoint: `${sink.url}/v1/traces`, sampleRatio: 0.01 } })
    await add(FULL, { ...base, tracing: { otlpEndpoint: `${sink.url}/v1/traces`, sampleRatio: 1 } })

    const targets: Target[] = gateways.map(({ name, gw }) => ({
      name,
      url: `${gw.url}${path}`,
      watch: [gw.pid],
      // The access log is written as in production; emptied between runs so the disk does not fill.
      before: () => gw.truncateLog(),
      after: () => gw.truncateLog()
    }))
    for (const t of targets) await expectOk(t.name, t.url)
    const rows = await runMatrix(targets, common, { label: `tracing ${kind}` })

    const notes = [pinning.note, 'THE MACHINE WAS BUSY (other engineers\' test suites and benches on the same 2 cores): one run, read the ratios, not the absolute numbers']
    for (const { name, gw } of gateways) {
      if (name !== LOW && name !== FULL) continue
      const m = await spanCounters(gw)
      notes.push(`${name}: ${m.exported} spans exported, ${m.dropped} dropped (${m.detail})`)
    }
    notes.push(goal(rows, LOW, 0.97), goal(rows, FULL, 0.85))
    if (todayMain !== null) notes.push(goal(rows, OFF, 0.97, TODAY))
    const what = kind === 'passthrough' ? 'pass-through proxy, 1 KB JSON' : 'aggregate of three 1 KB JSON sections'
    loadTable(`tracing — ${what}, ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, { baseline: todayMain !== null ? TODAY : OFF, notes })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

function goal (rows: MeasuredRow[], name: string, minRatio: number, against = OFF): string {
  const b = rows.find((r) => r.name === against)?.result
  const g = rows.find((r) => r.name === name)?.result
  if (b === undefined || g === undefined || b.rps === 0) return ''
  const x = g.rps / b.rps
  // CPU per request is the steadier figure on a shared machine: contention lowers req/s, not the work a request takes.
  const cpu = g.cpuUsPerReq / b.cpuUsPerReq
  return `goal ${name}: cost ≤ ${Math.round((1 - minRatio) * 100)}% of ${against} — req/s ${x.toFixed(3)}× (${((1 - x) * 100).toFixed(1)}% cost, ${x >= minRatio ? 'met' : 'not met'}); CPU µs/req ${cpu.toFixed(3)}× (${((cpu - 1) * 100).toFixed(1)}% more, ${cpu <= 2 - minRatio ? 'met' : 'not met'})`
}

async function spanCounters (gw: GatewayProcess): Promise<{ exported: number, dropped: number, detail: string }> {
  const text = await (await request(`${gw.adminUrl}/metrics`)).body.text()
  const exported = Number(/^gateway_trace_spans_exported_total (\d+)/m.exec(text)?.[1] ?? 0)
  let dropped = 0
  const detail: string[] = []
  for (const m of text.matchAll(/^gateway_trace_spans_dropped_total\{reason="([a-z_]+)"\} (\d+)/gm)) {
    dropped += Number(m[2])
    detail.push(`${m[1]} ${m[2]}`)
  }
  return { exported, dropped, detail: detail.join(', ') }
}

async function expectOk (name: string, url: string): Promise<void> {
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000 })
  const text = await res.body.text()
  if (res.statusCode !== 200 || text.length < 1024) throw new Error(`${name}: GET ${url} answered ${res.statusCode} with ${text.length} bytes: ${text.slice(0, 200)}`)
}
