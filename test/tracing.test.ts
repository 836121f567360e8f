/**
 * Tracing (SPEC §13) against a real OTLP/HTTP receiver and real upstreams:
 * the span tree of a proxy request, a retry to the secondary with the
 * switch it caused, an aggregate; W3C trace context in (continued) and out
 * (the upstream's parent id is its attempt's CLIENT span); trace ids on the
 * access line; protobuf export; off by default.
 */
import t from 'tap'
import { request } from 'undici'
import { startUpstream, deadPort, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from './helpers/otlp-receiver.js'
import { validateConfig, ConfigError } from '../src/config/load.js'

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/

function tracing (rx: OtlpReceiver, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { otlpEndpoint: rx.url, batchDelayMs: 20, exportTimeoutMs: 2000, ...extra }
}

async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string, requestId: string }> {
  const res = await request(url, { headers })
  return { status: res.statusCode, body: await res.body.text(), requestId: String(res.headers['x-request-id']) }
}

/** The upstream's received traceparent, split. */
function parentOf (up: TestUpstream, i = up.requests.length - 1): { traceId: string, parentId: string, flags: string } {
  const tp = up.requests[i]?.headers.traceparent
  const m = TRACEPARENT.exec(String(tp))
  if (m === null) throw new Error(`no valid traceparent at the upstream: ${String(tp)}`)
  return { traceId: m[1]!, parentId: m[2]!, flags: m[3]! }
}

function accessLine (g: TestGateway, reqId: string): Promise<Record<string, unknown>> {
  return g.waitForLog((l) => l.msg === 'request' && l.reqId === reqId)
}

const byKind = (spans: ReceivedSpan[], traceId: string, kind: ReceivedSpan['kind']): ReceivedSpan[] => spans.filter((s) => s.traceId === traceId && s.kind === kind)

t.test('a proxy request: one SERVER span, one CLIENT span per attempt, the upstream\'s parent id is the CLIENT span', async (t) => {
  const rx = await startOtlpReceiver()
  const up = await startUpstream('product')
  const g = await startGateway({
    tracing: tracing(rx, { serviceName: 'edge-gw' }),
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })

  const r = await get(`${g.url}/api/products/42`)
  t.equal(r.status, 200)
  const sent = parentOf(up)
  t.equal(sent.flags, '01', 'sampled (sampleRatio 1.0)')
  const spans = await rx.waitFor((s) => byKind(s, sent.traceId, 'SERVER').length === 1 && byKind(s, sent.traceId, 'CLIENT').length === 1)
  const server = byKind(spans, sent.traceId, 'SERVER')[0]!
  const client = byKind(spans, sent.traceId, 'CLIENT')[0]!
  t.equal(server.parentSpanId, '', 'no traceparent came in: a new trace, the SERVER span is its root')
  t.equal(server.name, 'GET /api/products')
  t.equal(server.attributes['http.route'], '/api/products')
  t.equal(server.attributes['http.response.status_code'], 200)
  t.equal(server.resource['service.name'], 'edge-gw')
  t.equal(client.parentSpanId, server.spanId, 'the CLIENT span is a child of the SERVER span')
  t.equal(sent.parentId, client.spanId, 'the upstream\'s parent id is the CLIENT span id')
  t.match(client.attributes, {
    'gateway.service': 'product',
    'gateway.deployment': 'default',
    'gateway.origin': 'primary',
    'gateway.attempt': 'first',
    'http.response.status_code': 200,
    'server.address': '127.0.0.1',
    'server.port': up.port
  })
  t.notOk('error.type' in client.attributes, 'no error on a good attempt')

  const line = await accessLine(g, r.requestId)
  t.equal(line.trace_id, server.traceId, 'the access line carries the trace id')
  t.equal(line.span_id, server.spanId, 'and the SERVER span id')
})

t.test('W3C trace context in: a sampled traceparent is continued, tracestate passed on; an unsampled one is respected', async (t) => {
  const rx = await startOtlpReceiver()
  const up = await startUpstream('product')
  const g = await startGateway({
    tracing: tracing(rx),
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })

  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  const callerSpan = '00f067aa0ba902b7'
  const r = await get(`${g.url}/api/x`, { traceparent: `00-${traceId}-${callerSpan}-01`, tracestate: 'vendor=abc,other=1' })
  t.equal(r.status, 200)
  const sent = parentOf(up)
  t.equal(sent.traceId, traceId, 'the upstream sees the caller\'s trace id')
  t.not(sent.parentId, callerSpan, 'the upstream\'s parent is the gateway\'s span, not the caller\'s')
  t.equal(sent.flags, '01')
  t.equal(up.requests.at(-1)?.headers.tracestate, 'vendor=abc,other=1', 'tracestate is passed on')
  const spans = await rx.waitFor((s) => byKind(s, traceId, 'SERVER').length === 1 && byKind(s, traceId, 'CLIENT').length === 1)
  t.equal(byKind(spans, traceId, 'SERVER')[0]!.parentSpanId, callerSpan, 'the SERVER span continues the caller\'s span')
  t.equal(byKind(spans, traceId, 'CLIENT')[0]!.spanId, sent.parentId)

  // The caller decided not to sample: nothing is recorded, the decision travels on.
  const quiet = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
  const q = await get(`${g.url}/api/y`, { traceparent: `00-${quiet}-bbbbbbbbbbbbbbbb-00` })
  t.equal(q.status, 200)
  const qs = parentOf(up)
  t.equal(qs.traceId, quiet, 'the same trace')
  t.equal(qs.flags, '00', 'not sampled upstream either')
  t.not(qs.parentId, 'bbbbbbbbbbbbbbbb', 'a span id of the gateway\'s own')
  const line = await accessLine(g, q.requestId)
  t.notOk('trace_id' in line, 'an unsampled request\'s access line has no trace ids')

  // A malformed traceparent starts a new trace (and its tracestate is dropped).
  const bad = await get(`${g.url}/api/z`, { traceparent: '00-zzzz-1234-01', tracestate: 'vendor=stale' })
  t.equal(bad.status, 200)
  const fresh = parentOf(up)
  t.not(fresh.traceId, quiet)
  t.equal(up.requests.at(-1)?.headers.tracestate, undefined, 'no tracestate without a valid traceparent')
  await rx.waitFor((s) => byKind(s, fresh.traceId, 'SERVER').length === 1)

  // Nothing of the unsampled request was exported, not even later.
  await rx.waitFor((s) => byKind(s, fresh.traceId, 'CLIENT').length === 1)
  t.equal(rx.spans.filter((s) => s.traceId === quiet).length, 0, 'an unsampled trace exports nothing')
})

t.test('sampleRatio 0: new traces are not recorded, yet every upstream call carries a traceparent', async (t) => {
  const rx = await startOtlpReceiver()
  const up = await startUpstream('product')
  const g = await startGateway({
    tracing: tracing(rx, { sampleRatio: 0 }),
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })
  const a = await get(`${g.url}/api/a`)
  const b = await get(`${g.url}/api/b`)
  t.equal(a.status, 200)
  t.equal(b.status, 200)
  t.equal(parentOf(up, 0).flags, '00')
  t.not(parentOf(up, 0).traceId, parentOf(up, 1).traceId, 'each request starts its own trace')
  // A caller's sampled trace is still kept (parent-based).
  const kept = 'cccccccccccccccccccccccccccccccc'
  await get(`${g.url}/api/c`, { traceparent: `00-${kept}-dddddddddddddddd-01` })
  await rx.waitFor((s) => byKind(s, kept, 'CLIENT').length === 1)
  t.equal(rx.spans.filter((s) => s.traceId !== kept).length, 0, 'only the caller-sampled trace was exported')
})

t.test('an unsampled aggregate: every section call still carries the trace, each with a span id of its own', async (t) => {
  const rx = await startOtlpReceiver()
  const a = await startUpstream('a')
  const b = await startUpstream('b')
  const g = await startGateway({
    tracing: tracing(rx, { sampleRatio: 0 }),
    services: { a: fastService({ primary: a.url }), b: fastService({ primary: b.url }) },
    routes: [{ type: 'aggregate', path: '/both/:id', sections: { a: { service: 'a', path: '/a/{id}' }, b: { service: 'b', path: '/b/{id}' } } }]
  })
  t.teardown(async () => { await g.close(); await a.close(); await b.close(); await rx.close() })
  const r = await get(`${g.url}/both/1`)
  t.equal(r.status, 200)
  const pa = parentOf(a)
  const pb = parentOf(b)
  t.equal(pa.traceId, pb.traceId, 'one trace')
  t.not(pa.parentId, pb.parentId, 'each attempt has its own span id')
  t.equal(pa.flags, '00')
  t.notOk('trace_id' in await accessLine(g, r.requestId))
})

t.test('a retry to the secondary: two CLIENT spans, the failed one with its error; the switch it caused is an event on the SERVER span', async (t) => {
  const rx = await startOtlpReceiver()
  const secondary = await startUpstream('secondary')
  const dead = await deadPort()
  const g = await startGateway({
    tracing: tracing(rx),
    services: {
      product: fastService({ primary: `http://127.0.0.1:${dead}`, secondary: secondary.url }, {
        // Probes too rare to mark the primary down before the request does.
        healthCheck: { intervalMs: 60000, timeoutMs: 500, unhealthyThreshold: 2, healthyThreshold: 2 },
        // One failed attempt opens the breaker: the switch happens during the request.
        circuitBreaker: { volumeThreshold: 1, errorThresholdPercentage: 50, resetTimeoutMs: 60000 }
      })
    },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await secondary.close(); await rx.close() })

  const r = await get(`${g.url}/api/items/1`)
  t.equal(r.status, 200, 'answered by the secondary')
  const sent = parentOf(secondary)
  const spans = await rx.waitFor((s) => byKind(s, sent.traceId, 'SERVER').length === 1 && byKind(s, sent.traceId, 'CLIENT').length === 2)
  const server = byKind(spans, sent.traceId, 'SERVER')[0]!
  const clients = byKind(spans, sent.traceId, 'CLIENT')
  const first = clients.find((c) => c.attributes['gateway.attempt'] === 'first')
  const retry = clients.find((c) => c.attributes['gateway.attempt'] === 'retry')
  t.ok(first && retry, 'a first attempt and a retry')
  t.equal(first?.attributes['gateway.origin'], 'primary')
  t.equal(first?.attributes['error.type'], 'ECONNREFUSED', 'the failed attempt names its error')
  t.equal(first?.statusCode, 2, 'and has status error')
  t.equal(first?.attributes['server.port'], dead)
  t.equal(retry?.attributes['gateway.origin'], 'secondary')
  t.equal(retry?.attributes['http.response.status_code'], 200)
  t.equal(retry?.parentSpanId, server.spanId)
  t.equal(first?.parentSpanId, server.spanId)
  t.equal(sent.parentId, retry?.spanId, 'the secondary\'s parent id is the retry\'s CLIENT span')
  const sw = server.events.find((e) => e.name === 'gateway.switch')
  t.ok(sw, 'the switch is an event on the SERVER span')
  t.match(sw?.attributes, { 'gateway.service': 'product', 'gateway.deployment': 'default', 'gateway.from': 'primary', 'gateway.to': 'secondary' })
})

t.test('an aggregate: one INTERNAL span per section under the SERVER span, each attempt a CLIENT span under its section', async (t) => {
  const rx = await startOtlpReceiver()
  const product = await startUpstream('product', (req, res) => json(res, 200, { id: 1, url: req.url }))
  const review = await startUpstream('review', (_req, res) => json(res, 500, { error: 'down' }))
  const inventory = await startUpstream('inventory', (_req, res) => json(res, 200, { inStock: true }))
  const g = await startGateway({
    tracing: tracing(rx),
    services: {
      product: fastService({ primary: product.url }),
      review: fastService({ primary: review.url }),
      inventory: fastService({ primary: inventory.url })
    },
    routes: [{
      type: 'aggregate',
      path: '/products/:id/details',
      sections: {
        product: { service: 'product', path: '/products/{id}', required: true },
        reviews: { service: 'review', path: '/reviews?productId={id}' },
        inventory: { service: 'inventory', path: '/inventory/{id}' }
      }
    }]
  })
  t.teardown(async () => { await g.close(); await product.close(); await review.close(); await inventory.close(); await rx.close() })

  const r = await get(`${g.url}/products/1/details`)
  t.equal(r.status, 200)
  const traceId = parentOf(product).traceId
  const spans = await rx.waitFor((s) => byKind(s, traceId, 'SERVER').length === 1 && byKind(s, traceId, 'INTERNAL').length === 3 && byKind(s, traceId, 'CLIENT').length === 3)
  const server = byKind(spans, traceId, 'SERVER')[0]!
  t.equal(server.attributes['http.route'], '/products/:id/details')
  const sections = new Map(byKind(spans, traceId, 'INTERNAL').map((s) => [String(s.attributes['gateway.section']), s]))
  t.strictSame([...sections.keys()].sort(), ['inventory', 'product', 'reviews'])
  for (const s of sections.values()) {
    t.equal(s.parentSpanId, server.spanId, `section ${String(s.attributes['gateway.section'])} under the SERVER span`)
    t.equal(s.attributes['gateway.cache'], 'none', 'no cache on this section')
  }
  t.equal(sections.get('product')?.attributes['gateway.outcome'], 'ok')
  t.equal(sections.get('reviews')?.attributes['gateway.outcome'], 'error_status')
  t.equal(sections.get('reviews')?.statusCode, 2)
  const clients = byKind(spans, traceId, 'CLIENT')
  for (const [up, key] of [[product, 'product'], [review, 'reviews'], [inventory, 'inventory']] as const) {
    const c = clients.find((s) => s.parentSpanId === sections.get(key)?.spanId)
    t.ok(c, `section ${key} has its CLIENT span`)
    t.equal(parentOf(up).parentId, c?.spanId, `${key}: the upstream's parent id is its CLIENT span`)
    t.equal(parentOf(up).traceId, traceId, `${key}: one trace`)
  }
  t.equal(clients.find((s) => s.attributes['gateway.service'] === 'review')?.attributes['error.type'], '500')
})

t.test('a client that goes away before the answer: its SERVER span still ends, marked aborted', async (t) => {
  const rx = await startOtlpReceiver()
  let release: (() => void) | null = null
  const up = await startUpstream('slow', (_req, res) => { release = () => json(res, 200, { late: true }) })
  const g = await startGateway({
    tracing: tracing(rx),
    services: { product: fastService({ primary: up.url }, { timeoutMs: 10000 }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { release?.(); await g.close(); await up.close(); await rx.close() })
  const ac = new AbortController()
  const pending = request(`${g.url}/api/slow`, { signal: ac.signal }).catch((err: unknown) => err)
  const deadline = Date.now() + 10000
  while (up.requests.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  const traceId = parentOf(up).traceId
  ac.abort()
  await pending
  const spans = await rx.waitFor((s) => byKind(s, traceId, 'SERVER').length === 1)
  const server = byKind(spans, traceId, 'SERVER')[0]!
  t.equal(server.attributes['gateway.aborted'], true, 'the SERVER span says the answer never completed')
  t.equal(server.statusCode, 2)
})

t.test('a traced request\'s own error line carries its trace_id and span_id too, once each', async (t) => {
  const rx = await startOtlpReceiver()
  const dead = await deadPort()
  const g = await startGateway({
    tracing: tracing(rx),
    services: { product: fastService({ primary: `http://127.0.0.1:${dead}` }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await rx.close() })
  const r = await get(`${g.url}/api/x`)
  t.equal(r.status, 502)
  const access = await accessLine(g, r.requestId)
  const error = await g.waitForLog((l) => l.level === 50 && l.reqId === r.requestId)
  t.match(access.trace_id, /^[0-9a-f]{32}$/)
  t.equal(error.trace_id, access.trace_id, 'the error line names the same trace')
  t.equal(error.span_id, access.span_id, 'and the SERVER span')
  const spans = await rx.waitFor((s) => s.some((x) => x.traceId === access.trace_id && x.kind === 'SERVER'))
  const server = spans.find((x) => x.traceId === access.trace_id && x.kind === 'SERVER')!
  t.equal(server.spanId, access.span_id)
  t.equal(server.attributes['error.type'], '502')
})

t.test('protocol http/protobuf: spans arrive protobuf-encoded', async (t) => {
  const rx = await startOtlpReceiver()
  const up = await startUpstream('product')
  const g = await startGateway({
    tracing: tracing(rx, { protocol: 'http/protobuf' }),
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })
  t.equal((await get(`${g.url}/api/x`)).status, 200)
  const sent = parentOf(up)
  const traceBytes = Buffer.from(sent.traceId, 'hex')
  const spanBytes = Buffer.from(sent.parentId, 'hex')
  const deadline = Date.now() + 10000
  while (!rx.exports.some((e) => e.body.includes(spanBytes)) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  const exp = rx.exports.find((e) => e.body.includes(spanBytes))
  t.ok(exp, 'an export carries the CLIENT span id as raw bytes')
  t.equal(exp?.contentType, 'application/x-protobuf')
  t.ok(exp?.body.includes(traceBytes), 'and the trace id')
  t.ok(exp?.body.includes(Buffer.from('gateway.attempt')), 'and the span attributes')
})

t.test('tracing off (the default): no trace headers are added, the access line has no trace keys', async (t) => {
  const up = await startUpstream('product')
  const g = await startGateway({
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close() })
  const r = await get(`${g.url}/api/x`)
  t.equal(r.status, 200)
  t.equal(up.requests[0]?.headers.traceparent, undefined)
  const line = await accessLine(g, r.requestId)
  t.notOk('trace_id' in line || 'span_id' in line)
  // A caller's own traceparent passes through untouched, as any end-to-end header.
  const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  await get(`${g.url}/api/y`, { traceparent: tp })
  t.equal(up.requests[1]?.headers.traceparent, tp)
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.notMatch(metrics, /gateway_trace_spans_dropped_total/, 'no tracing metrics without tracing')
})

t.test('config: tracing is off by default; its keys are checked with their paths', async (t) => {
  const base = { services: { a: { origins: { primary: 'http://127.0.0.1:1' } } } }
  t.strictSame(validateConfig(base).tracing, {
    otlpEndpoint: '', protocol: 'http/json', serviceName: 'lattice-gateway', sampleRatio: 1, headers: {}, maxQueueSize: 2048, batchDelayMs: 1000, exportTimeoutMs: 10000
  }, 'the defaults: no endpoint, so tracing is off')
  t.equal(validateConfig({ ...base, tracing: { otlpEndpoint: 'https://collector:4318/v1/traces', sampleRatio: 0.25 } }).tracing.sampleRatio, 0.25)
  const issues = (tracing: unknown): string[] => {
    try {
      validateConfig({ ...base, tracing })
      return []
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      return err.issues.map((i) => i.path)
    }
  }
  t.strictSame(issues({ otlpEndpoint: 'collector:4318' }), ['tracing.otlpEndpoint'], 'an endpoint that is not an http(s) URL')
  t.strictSame(issues({ sampleRatio: 1.5 }), ['tracing.sampleRatio'])
  t.strictSame(issues({ protocol: 'grpc' }), ['tracing.protocol'], 'only the OTLP/HTTP encodings')
  t.strictSame(issues({ sampleRate: 0.1 }), ['tracing.sampleRate'], 'a typo is an unknown key')
})
