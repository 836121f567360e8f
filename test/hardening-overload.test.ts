// Load shedding: the listener-wide in-flight limit, under-pressure (heap,
// event-loop delay) and the per-origin bulkhead, each answering 503
// GW_OVERLOADED with Retry-After — while the admin listener keeps
// answering /healthz and /metrics.
import t, { type Test } from 'tap'
import type { ServerResponse } from 'node:http'
import { request } from 'undici'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'
import { rawRequest, get } from './helpers/raw-http.js'

/** An upstream whose answers wait until `release()`. */
async function holdingUpstream (name: string): Promise<TestUpstream & { held: ServerResponse[], release(): void }> {
  const held: ServerResponse[] = []
  const up = await startUpstream(name, (_req, res) => { held.push(res) })
  return Object.assign(up, {
    held,
    release () { for (const res of held.splice(0)) json(res, 200, { name }) }
  })
}

async function until (what: string, pred: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

async function status (url: string): Promise<{ statusCode: number, retryAfter: string | undefined, code: string | undefined }> {
  const res = await request(url)
  const text = await res.body.text()
  const code = res.headers['content-type']?.toString().includes('json') === true ? (JSON.parse(text) as { code?: string }).code : undefined
  return { statusCode: res.statusCode, retryAfter: res.headers['retry-after'] as string | undefined, code }
}

async function adminStillAnswers (t: Test, g: TestGateway, metric: RegExp): Promise<void> {
  const healthz = await request(`${g.adminUrl}/healthz`)
  t.equal(healthz.statusCode, 200, 'admin /healthz: 200 while the public side sheds')
  await healthz.body.dump()
  const metrics = await request(`${g.adminUrl}/metrics`)
  t.equal(metrics.statusCode, 200, 'admin /metrics: 200 while the public side sheds')
  t.match(await metrics.body.text(), metric, `metrics show ${metric}`)
}

t.test('server.maxInFlight: one more request is 503 GW_OVERLOADED with Retry-After', async (t) => {
  const slow = await holdingUpstream('slow')
  const g = await startGateway({
    server: { maxInFlight: 2, retryAfterSeconds: 3, maxEventLoopDelayMs: 0 },
    services: { slow: fastService({ primary: slow.url }) },
    routes: [{ type: 'proxy', prefix: '/slow', service: 'slow' }]
  }, { start: false })
  t.teardown(async () => { slow.release(); await g.close(); await slow.close() })

  const a = request(`${g.url}/slow/a`)
  const b = request(`${g.url}/slow/b`)
  await until('two held requests', () => slow.held.length === 2)
  const shed = await status(`${g.url}/slow/c`)
  t.equal(shed.statusCode, 503)
  t.equal(shed.code, 'GW_OVERLOADED')
  t.equal(shed.retryAfter, '3', 'Retry-After from server.retryAfterSeconds')
  await adminStillAnswers(t, g, /gateway_shed_total\{reason="in_flight"\} 1/)

  slow.release()
  t.equal((await a).statusCode, 200)
  t.equal((await b).statusCode, 200)
  await (await a).body.dump()
  await (await b).body.dump()
  const after = request(`${g.url}/slow/d`)
  await until('the next request is held, not shed', () => slow.held.length === 1)
  slow.release()
  t.equal((await after).statusCode, 200, 'finished requests free their slots')
  await (await after).body.dump()

  // A client that hangs up frees its slot too.
  const gone1 = rawRequest(g.url, get('/slow/gone1'), { timeoutMs: 200 })
  const gone2 = rawRequest(g.url, get('/slow/gone2'), { timeoutMs: 200 })
  await Promise.all([gone1, gone2])
  await until('slots freed by hung-up clients', async () => {
    const m = await request(`${g.adminUrl}/metrics`)
    return /gateway_in_flight_requests 0/.test(await m.body.text())
  })
  const again = request(`${g.url}/slow/e`)
  await until('held again', () => slow.held.length >= 3)
  slow.release()
  t.equal((await again).statusCode, 200)
  await (await again).body.dump()
})

t.test('server.maxHeapUsedBytes: under-pressure sheds the public listener only', async (t) => {
  const up = await startUpstream('product')
  const g = await startGateway({
    // Any heap is over one byte: shedding starts at the first sample.
    server: { maxHeapUsedBytes: 1, maxEventLoopDelayMs: 0, loadSampleIntervalMs: 20, retryAfterSeconds: 7 },
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product' }]
  }, { start: false })
  t.teardown(async () => { await g.close(); await up.close() })
  let shed = await status(`${g.url}/api/1`)
  await until('the first sample', async () => (shed = await status(`${g.url}/api/1`)).statusCode === 503)
  t.equal(shed.code, 'GW_OVERLOADED')
  t.equal(shed.retryAfter, '7')
  await adminStillAnswers(t, g, /gateway_shed_total\{reason="heap"\} [1-9]/)
  const before = up.requests.length
  await status(`${g.url}/api/2`)
  t.equal(up.requests.length, before, 'a shed request costs the upstream nothing')
})

t.test('server.maxEventLoopDelayMs: a blocked event loop sheds, and recovers', async (t) => {
  const up = await startUpstream('product')
  const g = await startGateway({
    server: { maxEventLoopDelayMs: 100, loadSampleIntervalMs: 50 },
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product' }]
  }, { start: false })
  let blocking = true
  t.teardown(async () => { blocking = false; await g.close(); await up.close() })
  t.equal((await status(`${g.url}/api/1`)).statusCode, 200)
  // Busy for 300 ms, idle for 10, over and over: the event loop lags.
  const block = (): void => {
    if (!blocking) return
    const end = Date.now() + 300
    while (Date.now() < end) { /* busy */ }
    setTimeout(block, 10)
  }
  block()
  let shed = { statusCode: 0, retryAfter: undefined as string | undefined, code: undefined as string | undefined }
  await until('shedding', async () => (shed = await status(`${g.url}/api/2`)).statusCode === 503, 10000)
  t.equal(shed.code, 'GW_OVERLOADED')
  t.equal(shed.retryAfter, '1', 'default Retry-After')
  await adminStillAnswers(t, g, /gateway_shed_total\{reason="event_loop_delay"\} [1-9]/)
  blocking = false
  await until('recovery', async () => (await status(`${g.url}/api/3`)).statusCode === 200, 10000)
  t.pass('serves again once the loop is free')
})

t.test('service.maxQueued: a slow service is capped; other routes are unaffected', async (t) => {
  const slow = await holdingUpstream('slow')
  const fast = await startUpstream('fast')
  const g = await startGateway({
    server: { maxEventLoopDelayMs: 0 },
    services: {
      slow: fastService({ primary: slow.url }, { maxConnections: 1, maxQueued: 1, timeoutMs: 5000 }),
      fast: fastService({ primary: fast.url })
    },
    routes: [{ type: 'proxy', prefix: '/slow', service: 'slow' }, { type: 'proxy', prefix: '/fast', service: 'fast' }]
  }, { start: false })
  t.teardown(async () => { slow.release(); await g.close(); await slow.close(); await fast.close() })

  const origin = g.gw.registry.get('slow')!.groups.get('default')!.primary
  const running = request(`${g.url}/slow/a`)
  const queued = request(`${g.url}/slow/b`)
  await until('one sent, one queued', () => slow.held.length === 1 && origin.inFlight === 2)
  const shed = await status(`${g.url}/slow/c`)
  t.equal(shed.statusCode, 503, 'the third request to the slow service: 503')
  t.equal(shed.code, 'GW_OVERLOADED')
  t.equal(shed.retryAfter, '5', 'Retry-After: the service timeout, in seconds')
  t.equal((await status(`${g.url}/fast/x`)).statusCode, 200, 'another service: 200')
  t.equal(slow.held.length, 1, 'the refused request never reached the slow upstream')
  t.equal(g.gw.registry.get('slow')!.groups.get('default')!.primary.breakerState, 'closed', 'refusals do not count against the origin')

  slow.release()
  t.equal((await running).statusCode, 200)
  await (await running).body.dump()
  await until('the queued one is sent', () => slow.held.length === 1)
  slow.release()
  t.equal((await queued).statusCode, 200, 'the queued request was served')
  await (await queued).body.dump()
  await until('the bulkhead is empty', () => origin.inFlight === 0)
  const next = request(`${g.url}/slow/d`)
  await until('held', () => slow.held.length === 1)
  slow.release()
  t.equal((await next).statusCode, 200, 'capacity comes back')
  await (await next).body.dump()
})

t.test('an aggregate section refused by the service bulkhead: 503 GW_OVERLOADED with Retry-After when required, null when optional', async (t) => {
  const slow = await holdingUpstream('slow')
  const fast = await startUpstream('fast', (_req, res) => json(res, 200, { name: 'fast' }))
  const g = await startGateway({
    server: { maxEventLoopDelayMs: 0 },
    services: {
      slow: fastService({ primary: slow.url }, { maxConnections: 1, maxQueued: 0, timeoutMs: 3000 }),
      fast: fastService({ primary: fast.url })
    },
    routes: [
      { type: 'proxy', prefix: '/slow', service: 'slow' },
      { type: 'aggregate', path: '/required/:id', sections: { main: { service: 'slow', path: '/x/{id}', required: true }, extra: { service: 'fast', path: '/y/{id}' } } },
      { type: 'aggregate', path: '/optional/:id', sections: { main: { service: 'fast', path: '/y/{id}', required: true }, extra: { service: 'slow', path: '/x/{id}' } } }
    ]
  }, { start: false })
  t.teardown(async () => { slow.release(); await g.close(); await slow.close(); await fast.close() })

  const origin = g.gw.registry.get('slow')!.groups.get('default')!.primary
  const running = request(`${g.url}/slow/hold`)
  await until('the slow service\'s one slot taken', () => slow.held.length === 1 && origin.inFlight === 1)

  const res = await request(`${g.url}/required/1`)
  const body = await res.body.json() as { code: string, section?: string }
  t.equal(res.statusCode, 503, 'a required section refused by the bulkhead: 503, not 502')
  t.equal(body.code, 'GW_OVERLOADED')
  t.equal(body.section, 'main')
  t.equal(res.headers['retry-after'], '3', 'Retry-After: the service timeout, in seconds')
  t.equal(res.headers['x-aggregate-failed'], 'main')

  const opt = await request(`${g.url}/optional/1`)
  const merged = await opt.body.json() as Record<string, unknown>
  t.equal(opt.statusCode, 200, 'an optional section refused by the bulkhead: the aggregate still answers')
  t.equal(merged.extra, null, 'the refused optional section is null')
  t.equal(slow.held.length, 1, 'no refused call reached the slow upstream')

  slow.release()
  await (await running).body.dump()
})
