/**
 * dashboards/grafana-lattice-gateway.json: every PromQL expression of the
 * dashboard (panel targets and template variable queries) names at least
 * one metric, and every metric it names is one a real gateway's /metrics
 * exposes — or one SPEC part two names for a feature built elsewhere
 * (fleet, rollouts, cache), listed below, so that merging those features
 * keeps this green and a misspelt name never is.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { request } from 'undici'
import { startUpstream } from './helpers/upstream.js'
import { startGateway, fastService } from './helpers/gateway.js'
import { startOtlpReceiver } from './helpers/otlp-receiver.js'

const DASHBOARD = new URL('../dashboards/grafana-lattice-gateway.json', import.meta.url)

/** Metric names SPEC part two defines (§10 fleet, §11 rollouts, §12 cache), whichever branch builds them. */
const SPEC_PART_TWO = new Set([
  'gateway_fleet_connected', 'gateway_fleet_replicas', 'gateway_fleet_version',
  'gateway_rollouts_total', 'gateway_rollout_shielded_total',
  'gateway_cache_total'
])

// PromQL words that look like metric names but are not.
const NOT_METRICS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool', 'and', 'or', 'unless', 'le', 'inf', 'nan'])

/** Identifiers of a PromQL expression that name series: not functions, label names, strings, durations or variables. */
function metricNames (expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // label values
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '') // grouping labels
    .replace(/\[[^\]]*\]/g, '') // ranges
    .replace(/\$\{?\w+\}?/g, '') // dashboard variables
  const out: string[] = []
  for (const m of bare.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?/g)) {
    if (m[1] !== undefined) continue // a function call
    if (NOT_METRICS.has(m[0].toLowerCase())) continue
    out.push(m[0])
  }
  return out
}

interface Panel { title?: string, type?: string, targets?: Array<{ expr?: string }>, panels?: Panel[] }

function expressions (doc: { panels?: Panel[], templating?: { list?: Array<{ name: string, query?: unknown }> } }): Array<{ where: string, expr: string }> {
  const out: Array<{ where: string, expr: string }> = []
  const walk = (ps: Panel[] | undefined): void => {
    for (const p of ps ?? []) {
      for (const target of p.targets ?? []) if (typeof target.expr === 'string') out.push({ where: `panel "${p.title ?? '?'}"`, expr: target.expr })
      walk(p.panels)
    }
  }
  walk(doc.panels)
  for (const v of doc.templating?.list ?? []) {
    const q = typeof v.query === 'string' ? v.query : (v.query as { query?: string } | undefined)?.query
    // label_values(metric, label): the metric is the first argument.
    const lv = typeof q === 'string' ? /^label_values\(\s*([^,]+),/.exec(q) : null
    if (lv !== null) out.push({ where: `variable $${v.name}`, expr: lv[1]! })
  }
  return out
}

t.test('metricNames reads PromQL as intended (the checker itself can fail)', async (t) => {
  t.strictSame(metricNames('histogram_quantile(0.99, sum by (le, route) (rate(gateway_request_duration_seconds_bucket{route=~"$route"}[$__rate_interval])))'), ['gateway_request_duration_seconds_bucket'])
  t.strictSame(metricNames('sum(rate(a_total{x="b_total"}[5m])) / sum without (z) (b_total)'), ['a_total', 'b_total'])
  t.strictSame(metricNames('min(gateway_fleet_connected) and on (job) up'), ['gateway_fleet_connected', 'up'])
})

t.test('every dashboard expression names metrics the gateway exports (or SPEC part two defines)', async (t) => {
  const doc = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Parameters<typeof expressions>[0] & { title?: string, uid?: string }
  t.equal(doc.uid, 'lattice-gateway')

  // A gateway with every part-one feature on, and tracing, so that its whole metric set is exposed.
  const rx = await startOtlpReceiver()
  const a = await startUpstream('a')
  const b = await startUpstream('b')
  const g = await startGateway({
    tracing: { otlpEndpoint: rx.url },
    services: { a: fastService({ primary: a.url, secondary: b.url }), b: fastService({ primary: b.url }) },
    routes: [
      { type: 'proxy', prefix: '/api', service: 'a', rewritePrefix: '' },
      { type: 'aggregate', path: '/both/:id', sections: { a: { service: 'a', path: '/a/{id}' }, b: { service: 'b', path: '/b/{id}' } } }
    ]
  })
  t.teardown(async () => { await g.close(); await a.close(); await b.close(); await rx.close() })
  for (const path of ['/api/x', '/both/1']) await (await request(`${g.url}${path}`)).body.dump()
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const exported = new Set<string>()
  for (const m of text.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)/gm)) exported.add(m[1]!)
  // A labelled metric with no series yet (nothing shed so far) is still declared.
  for (const m of text.matchAll(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$/gm)) {
    const suffixes = m[2] === 'histogram' ? ['_bucket', '_sum', '_count'] : m[2] === 'summary' ? ['', '_sum', '_count'] : ['']
    for (const sfx of suffixes) exported.add(m[1]! + sfx)
  }
  t.ok(exported.has('gateway_requests_total') && exported.has('gateway_request_duration_seconds_bucket'), 'the scrape was read')
  for (const name of SPEC_PART_TWO) t.notOk(/[A-Z]/.test(name), `${name} is a metric name`)

  const exprs = expressions(doc)
  t.ok(exprs.length >= 20, `the dashboard has its expressions (${exprs.length})`)
  const unknown: string[] = []
  for (const { where, expr } of exprs) {
    const names = metricNames(expr)
    t.ok(names.length > 0, `${where}: names a metric (${expr})`)
    for (const n of names) if (!exported.has(n) && !SPEC_PART_TWO.has(n)) unknown.push(`${where}: ${n}`)
  }
  t.strictSame(unknown, [], 'no expression names a metric nobody exports')

  // Coverage of what the dashboard is for.
  const all = exprs.map((e) => e.expr).join('\n')
  for (const m of ['gateway_requests_total', 'gateway_upstream_requests_total', 'gateway_failovers_total', 'gateway_origin_healthy', 'gateway_traffic_weight', 'gateway_rollouts_total', 'gateway_cache_total', 'gateway_fleet_replicas', 'gateway_trace_spans_dropped_total']) {
    t.match(all, m, `a panel shows ${m}`)
  }
})
