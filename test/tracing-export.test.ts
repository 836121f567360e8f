/**
 * The span exporter never touches traffic (SPEC §13): with the collector
 * down, refusing, or too slow, every request still answers 200, and every
 * lost span is counted in gateway_trace_spans_dropped_total{reason}. A
 * failing exporter is logged once when it starts failing and once when it
 * recovers.
 */
import t from 'tap'
import { request } from 'undici'
import { startUpstream, deadPort } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startOtlpReceiver } from './helpers/otlp-receiver.js'

async function counters (g: TestGateway): Promise<Record<string, number>> {
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const out: Record<string, number> = {}
  for (const m of text.matchAll(/^gateway_trace_spans_(dropped_total\{reason="([a-z_]+)"\}|exported_total) (\d+)$/gm)) {
    out[m[2] ?? 'exported'] = Number(m[3])
  }
  return out
}

async function until (g: TestGateway, pred: (c: Record<string, number>) => boolean, what: string, ms = 20000): Promise<Record<string, number>> {
  const deadline = Date.now() + ms
  for (;;) {
    const c = await counters(g)
    if (pred(c)) return c
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(c)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

async function burst (g: TestGateway, n: number): Promise<number[]> {
  const statuses: number[] = []
  await Promise.all(Array.from({ length: n }, async (_, i) => {
    const res = await request(`${g.url}/api/items/${i}`)
    await res.body.dump()
    statuses.push(res.statusCode)
  }))
  return statuses
}

t.test('collector unreachable: every request answers 200, every span is counted as dropped; recovery is logged', async (t) => {
  const up = await startUpstream('product')
  const port = await deadPort()
  const g = await startGateway({
    tracing: { otlpEndpoint: `http://otlp:s3cret@127.0.0.1:${port}/v1/traces`, batchDelayMs: 20, exportTimeoutMs: 300 },
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  let rx: Awaited<ReturnType<typeof startOtlpReceiver>> | null = null
  t.teardown(async () => { await g.close(); await up.close(); await rx?.close() })

  t.match(await counters(g), { queue_full: 0, export_failed: 0, shutdown: 0, exported: 0 }, 'the counters are shown from the start')
  const statuses = await burst(g, 20)
  t.strictSame(statuses, Array(20).fill(200), 'every request answered 200')
  // 20 SERVER spans + 20 CLIENT spans, all lost.
  const c = await until(g, (c) => (c.export_failed ?? 0) + (c.queue_full ?? 0) >= 40, '40 dropped spans')
  t.equal((c.export_failed ?? 0) + (c.queue_full ?? 0), 40, 'exactly the 40 spans ended are counted')
  t.equal(c.exported, 0)
  const failing = await g.waitForLog((l) => l.event === 'trace_export' && l.healthy === false)
  t.equal(failing.level, 40, 'a warning')
  t.equal(failing.endpoint, `http://127.0.0.1:${port}/v1/traces`, 'naming the endpoint without its credentials')
  t.notMatch(JSON.stringify(g.logs), /s3cret/, 'no log line carries the password')
  t.equal(g.logs.filter((l) => l.event === 'trace_export').length, 1, 'one line for the failing state, not one per batch')

  // The collector comes back where it was.
  rx = await startOtlpReceiver(port)
  t.equal((await burst(g, 2)).length, 2)
  await rx.waitFor((s) => s.length >= 4)
  await g.waitForLog((l) => l.event === 'trace_export' && l.healthy === true)
  const after = await until(g, (c) => (c.exported ?? 0) >= 4, 'exports after recovery')
  t.equal(after.export_failed, c.export_failed, 'nothing more lost once it is back')
})

t.test('collector answering errors: the batches are counted as export_failed', async (t) => {
  const rx = await startOtlpReceiver()
  rx.status = 400
  const up = await startUpstream('product')
  const g = await startGateway({
    tracing: { otlpEndpoint: rx.url, batchDelayMs: 20, exportTimeoutMs: 1000 },
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })
  t.strictSame(await burst(g, 5), Array(5).fill(200))
  const c = await until(g, (c) => (c.export_failed ?? 0) >= 10, '10 failed spans')
  t.equal(c.export_failed, 10)
  t.ok(rx.exports.length > 0, 'the collector was reached')
})

t.test('collector too slow: the bounded queue drops and counts spans, requests still answer 200', async (t) => {
  const rx = await startOtlpReceiver()
  rx.hang = true
  const up = await startUpstream('product')
  const g = await startGateway({
    tracing: { otlpEndpoint: rx.url, batchDelayMs: 20, exportTimeoutMs: 3000, maxQueueSize: 4 },
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await rx.close() })
  // The first batch reaches the collector and hangs there.
  t.strictSame(await burst(g, 2), [200, 200])
  await rx.waitFor(() => rx.exports.length >= 1)
  t.strictSame(await burst(g, 20), Array(20).fill(200), 'every request answered 200 while the collector hangs')
  // The queue was full with the first 4 spans: the 40 later ones are dropped at once.
  const c = await until(g, (c) => (c.queue_full ?? 0) >= 40, '40 queue_full drops')
  t.equal(c.queue_full, 40, 'the queue holds at most 4 spans: every later span is dropped and counted')
  t.equal(c.exported, 0)
})

t.test('a live collector killed under load: no request fails, the spans it misses are counted', async (t) => {
  const up = await startUpstream('product')
  const rx = await startOtlpReceiver()
  const g = await startGateway({
    tracing: { otlpEndpoint: rx.url, batchDelayMs: 20, exportTimeoutMs: 300 },
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]
  })
  t.teardown(async () => { await g.close(); await up.close() })
  let stop = false
  const statuses: number[] = []
  const loops = Array.from({ length: 8 }, async () => { while (!stop) statuses.push(...await burst(g, 1)) })
  await until(g, (c) => (c.exported ?? 0) >= 10, 'spans exported before the kill')
  await rx.close()
  await until(g, (c) => (c.export_failed ?? 0) + (c.queue_full ?? 0) > 0, 'spans lost after the kill')
  const seen = statuses.length
  while (statuses.length < seen + 50) await new Promise((resolve) => setTimeout(resolve, 20))
  stop = true
  await Promise.all(loops)
  t.ok(statuses.length > 60, `${statuses.length} requests across the kill`)
  t.strictSame(statuses.filter((s) => s !== 200), [], 'no request failed while the collector died')
})
