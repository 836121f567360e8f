// Stateless failover (SPEC §4): one retry on the other origin for the
// retryable methods, the never-sent rule for every method, and no replay of a
// request that may have reached an origin. Health checks are off here
// (start: false) so every request meets the primary first.
import t, { type Test } from 'tap'
import { Readable } from 'node:stream'
import { request } from 'undici'
import { startUpstream, deadPort, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

const ROUTES = [{ type: 'proxy', prefix: '/api', service: 'product', rewritePrefix: '' }]

async function setup (t: Test, primary: TestUpstream | string, secondary: TestUpstream, extra: Record<string, unknown> = {}): Promise<TestGateway> {
  const g = await startGateway({
    services: { product: fastService({ primary: typeof primary === 'string' ? primary : primary.url, secondary: secondary.url }, { circuitBreaker: { volumeThreshold: 1000 }, ...extra }) },
    routes: ROUTES
  }, { start: false })
  t.teardown(async () => {
    await g.close()
    await secondary.close()
    if (typeof primary !== 'string') await primary.close()
  })
  return g
}


async function metric (g: TestGateway, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{')) continue
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return 0
}

const dead = async (): Promise<string> => `http://127.0.0.1:${await deadPort()}`

t.test('GET: a retryable status on the primary -> the client sees the secondary\'s answer only', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 503, { from: 'primary' }, { 'x-from': 'primary' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/items/1`, { headers: { 'x-request-id': 'retry-status-1' } })
  const body = await res.body.json() as { name: string, url: string }
  t.equal(res.statusCode, 200)
  t.equal(body.name, 'secondary')
  t.equal(body.url, '/items/1')
  t.equal(res.headers['x-from'], undefined, 'no header of the first answer leaks')
  t.equal(pri.requests.length, 1)
  t.equal(sec.requests.length, 1)
  t.equal(sec.requests[0]!.headers['x-request-id'], 'retry-status-1', 'the retry carries the same request id')
  t.equal(await metric(g, 'gateway_failovers_total', { kind: 'retry' }), 1)
  t.equal(await metric(g, 'gateway_upstream_requests_total', { origin: 'primary', outcome: 'error_status' }), 1)
  t.equal(await metric(g, 'gateway_upstream_requests_total', { origin: 'secondary', outcome: 'ok' }), 1)
})

t.test('GET: a status outside retry.onStatus is answered as is', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 404, { from: 'primary' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/missing`)
  t.equal(res.statusCode, 404)
  t.same(await res.body.json(), { from: 'primary' })
  t.equal(sec.requests.length, 0)
})

t.test('GET: connection refused on the primary -> the secondary answers', async (t) => {
  const sec = await startUpstream('secondary')
  const g = await setup(t, await dead(), sec)
  const res = await request(`${g.url}/api/items/2`)
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { name: string }).name, 'secondary')
  t.equal(await metric(g, 'gateway_upstream_requests_total', { origin: 'primary', outcome: 'connect_error' }), 1)
  t.equal(await metric(g, 'gateway_failovers_total', { kind: 'retry' }), 1)
})

t.test('GET: a timeout on the primary -> the secondary answers', async (t) => {
  // The primary never answers; the attempt timeout leaves the secondary ample time on a busy machine.
  const pri = await startUpstream('primary', () => {})
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec, { timeoutMs: 1500 })
  const res = await request(`${g.url}/api/slow`)
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { name: string }).name, 'secondary')
  t.equal(await metric(g, 'gateway_upstream_requests_total', { origin: 'primary', outcome: 'timeout' }), 1)
})

t.test('GET: the primary resets the connection before answering -> the secondary answers', async (t) => {
  const pri = await startUpstream('primary', (req) => { req.socket.destroy() })
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/reset`)
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { name: string }).name, 'secondary')
  t.equal(pri.requests.length, 1)
})

t.test('GET: both origins fail -> 502 GW_UPSTREAM_FAILED, one attempt each', async (t) => {
  const pri = await startUpstream('primary', (req) => { req.socket.destroy() })
  const sec = await startUpstream('secondary', (req) => { req.socket.destroy() })
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/x`)
  t.equal(res.statusCode, 502)
  t.equal((await res.body.json() as { code: string }).code, 'GW_UPSTREAM_FAILED')
  t.equal(pri.requests.length, 1)
  t.equal(sec.requests.length, 1)
})

t.test('a response that already started streaming is never retried', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100000' })
    res.write('x'.repeat(1000), () => setTimeout(() => res.socket?.destroy(), 20))
  })
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/stream`)
  t.equal(res.statusCode, 200, 'the client got the primary\'s headers')
  await t.rejects(res.body.text(), 'the body breaks off')
  t.equal(pri.requests.length, 1)
  t.equal(sec.requests.length, 0, 'nothing was replayed on the secondary')
})

t.test('POST that got 503 from the primary is answered 503 unchanged and never replayed', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 503, { from: 'primary', busy: true }, { 'retry-after': '7' }))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/orders`, { method: 'POST', body: JSON.stringify({ n: 1 }), headers: { 'content-type': 'application/json' } })
  t.equal(res.statusCode, 503)
  t.same(await res.body.json(), { from: 'primary', busy: true })
  t.equal(res.headers['retry-after'], '7')
  t.equal(pri.requests.length, 1)
  t.equal(pri.requests[0]!.body.toString(), '{"n":1}')
  t.equal(sec.requests.length, 0)
  t.equal(await metric(g, 'gateway_failovers_total', { kind: 'retry' }), 0)
})

t.test('POST that reached the primary and lost its connection is not replayed (502)', async (t) => {
  const pri = await startUpstream('primary', (req) => { req.socket.destroy() })
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec)
  const res = await request(`${g.url}/api/orders`, { method: 'POST', body: 'once only' })
  t.equal(res.statusCode, 502)
  t.equal((await res.body.json() as { code: string }).code, 'GW_UPSTREAM_FAILED')
  t.equal(pri.requests.length, 1)
  t.equal(pri.requests[0]!.body.toString(), 'once only')
  t.equal(sec.requests.length, 0)
})

t.test('POST with a streamed body whose first connection was refused is sent intact to the secondary', async (t) => {
  const sec = await startUpstream('secondary')
  const g = await setup(t, await dead(), sec)
  const chunks = Array.from({ length: 16 }, (_, i) => Buffer.alloc(4096, 97 + i))
  async function * slowly (): AsyncGenerator<Buffer> {
    for (const c of chunks) {
      yield c
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
  const res = await request(`${g.url}/api/upload`, { method: 'POST', body: Readable.from(slowly()), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { name: string }).name, 'secondary')
  t.equal(sec.requests.length, 1)
  t.ok(sec.requests[0]!.body.equals(Buffer.concat(chunks)), 'every byte arrived, in order')
  t.equal(await metric(g, 'gateway_failovers_total', { kind: 'retry' }), 1)
})

t.test('POST with a content-length body whose first connection was refused is re-sent', async (t) => {
  const sec = await startUpstream('secondary')
  const g = await setup(t, await dead(), sec)
  const res = await request(`${g.url}/api/orders`, { method: 'POST', body: '{"order":42}', headers: { 'content-type': 'application/json' } })
  t.equal(res.statusCode, 200)
  t.equal(sec.requests[0]!.body.toString(), '{"order":42}')
})

t.test('DELETE whose first connection was refused goes to the secondary', async (t) => {
  const sec = await startUpstream('secondary')
  const g = await setup(t, await dead(), sec)
  const res = await request(`${g.url}/api/orders/9`, { method: 'DELETE' })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  t.equal(sec.requests[0]!.method, 'DELETE')
})

t.test('a method added to retry.methods is replayed after a retryable status', async (t) => {
  const pri = await startUpstream('primary', (_req, res) => json(res, 502, {}))
  const sec = await startUpstream('secondary')
  const g = await setup(t, pri, sec, { retry: { methods: ['GET', 'PUT'] } })
  const res = await request(`${g.url}/api/things/1`, { method: 'PUT', body: 'same bytes twice' })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  t.equal(pri.requests[0]!.body.toString(), 'same bytes twice')
  t.equal(sec.requests[0]!.body.toString(), 'same bytes twice')
})
