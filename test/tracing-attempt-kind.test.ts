/**
 * The attempt kind of a CLIENT span (`gateway.attempt`) comes from the
 * request: `first` by default, or what the caller of the send primitive
 * says — a rollout's shield re-send (`shield`), a hedged section's second
 * attempt (`hedge`) — while the retry to the other origin stays `retry`.
 * Called here the way those features call it: `Service.send()` with the
 * request's trace and an `attempt` kind.
 */
import t from 'tap'
import { startUpstream, deadPort } from './helpers/upstream.js'
import { startGateway, fastService } from './helpers/gateway.js'
import { startOtlpReceiver } from './helpers/otlp-receiver.js'

t.test('send() with attempt: shield / hedge names its CLIENT span so; its retry stays retry', async (t) => {
  const rx = await startOtlpReceiver()
  const up = await startUpstream('secondary')
  const dead = await deadPort()
  const g = await startGateway({
    tracing: { otlpEndpoint: rx.url, batchDelayMs: 20 },
    services: { svc: fastService({ primary: `http://127.0.0.1:${dead}`, secondary: up.url }, { healthCheck: { intervalMs: 60000, timeoutMs: 500, unhealthyThreshold: 5, healthyThreshold: 2 }, circuitBreaker: { volumeThreshold: 100, resetTimeoutMs: 60000 } }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'svc', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })
  const tracing = g.gw.tracing
  t.ok(tracing, 'the gateway exposes its tracing')
  const service = g.gw.registry.get('svc')!
  const traces: string[] = []
  for (const kind of ['shield', 'hedge'] as const) {
    const trace = tracing!.start('GET', '/api', {})
    traces.push(trace.ids!.trace_id)
    const res = await service.send({ method: 'GET', path: `/${kind}`, headers: {}, body: null, trace, attempt: kind }, {})
    await res.body.dump()
    t.equal(res.statusCode, 200)
    tracing!.finish(trace, 200, false)
  }
  const spans = await rx.waitFor((s) => traces.every((id) => s.filter((x) => x.traceId === id && x.kind === 'CLIENT').length === 2))
  for (const [i, kind] of ['shield', 'hedge'].entries()) {
    const clients = spans.filter((s) => s.traceId === traces[i] && s.kind === 'CLIENT')
    t.strictSame(clients.map((c) => `${String(c.attributes['gateway.origin'])}:${String(c.attributes['gateway.attempt'])}`).sort(), [`primary:${kind}`, 'secondary:retry'], `${kind}: the first attempt is a ${kind}, the one on the other origin a retry`)
  }
  // Untraced: the same call with no trace adds no header.
  const res = await service.send({ method: 'GET', path: '/plain', headers: {}, body: null }, {})
  await res.body.dump()
  t.equal(up.requests.at(-1)?.headers.traceparent, undefined)
})
