// Request limits on the public listener, driven by raw sockets: URL length,
// header count and size, body size, and clients too slow to send their
// headers or body (slowloris). Every limit comes from the config.
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startUpstream, type TestUpstream } from './helpers/upstream.js'
import { rawRequest, get } from './helpers/raw-http.js'

async function setup (t: Test, server: Record<string, unknown>): Promise<{ g: TestGateway, up: TestUpstream }> {
  const up = await startUpstream('product')
  const g = await startGateway({
    server,
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  }, { start: false })
  t.teardown(async () => { await g.close(); await up.close() })
  return { g, up }
}

t.test('URL length: over server.maxUrlLength is 414 GW_BAD_REQUEST', async (t) => {
  const { g, up } = await setup(t, { maxUrlLength: 100 })
  const fits = '/api/products/' + 'a'.repeat(100 - '/api/products/'.length)
  t.equal((await rawRequest(g.url, get(fits))).status, 200, 'exactly the limit passes')
  const r = await rawRequest(g.url, get(fits + 'a'))
  t.equal(r.status, 414)
  t.equal(JSON.parse(r.body).code, 'GW_BAD_REQUEST')
  t.equal(up.requests.length, 1, 'the long one never reached the upstream')
})

t.test('header count: more than server.maxHeaderCount is 431', async (t) => {
  const { g, up } = await setup(t, { maxHeaderCount: 10 })
  // get() adds Host and Connection: 2 + 8 = 10 headers.
  const eight = Array.from({ length: 8 }, (_, i) => `x-h${i}: v`)
  t.equal((await rawRequest(g.url, get('/api/products/1', eight))).status, 200, '10 headers pass')
  const r = await rawRequest(g.url, get('/api/products/1', [...eight, 'x-one-more: v']))
  t.equal(r.status, 431)
  t.equal(JSON.parse(r.body).code, 'GW_BAD_REQUEST')
  const many = await rawRequest(g.url, get('/api/products/1', Array.from({ length: 500 }, (_, i) => `x-m${i}: v`)))
  t.equal(many.status, 431, '500 headers: 431, not silently truncated')
  t.equal(up.requests.length, 1)
})

t.test('header size: over server.maxHeaderBytes is 431 and the connection closes', async (t) => {
  const { g, up } = await setup(t, { maxHeaderBytes: 2048 })
  t.equal((await rawRequest(g.url, get('/api/products/1', ['x-big: ' + 'a'.repeat(1000)]))).status, 200)
  const r = await rawRequest(g.url, get('/api/products/1', ['x-big: ' + 'a'.repeat(4000)]))
  t.equal(r.status, 431)
  t.same(JSON.parse(r.body), { statusCode: 431, code: 'GW_BAD_REQUEST', error: 'Request Header Fields Too Large', message: 'request headers are too large' })
  t.equal(r.ended, 'closed')
  const long = await rawRequest(g.url, get('/api/products/' + 'a'.repeat(4000)))
  t.equal(long.status, 431, 'a request line over the header budget too')
  t.equal(up.requests.length, 1)
})

t.test('body size: 413 GW_BODY_TOO_LARGE for declared, chunked and buffered bodies', async (t) => {
  const { g, up } = await setup(t, { bodyLimitBytes: 1024 })
  const declared = await rawRequest(g.url, `POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n${'a'.repeat(5000)}`)
  t.equal(declared.status, 413, 'content-length over the limit')
  t.equal(JSON.parse(declared.body).code, 'GW_BODY_TOO_LARGE')

  const chunk = 'a'.repeat(600)
  const chunked = `POST /api/products HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
    `258\r\n${chunk}\r\n258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`
  const streamed = await rawRequest(g.url, chunked)
  t.equal(streamed.status, 413, 'chunked POST (streamed to the upstream) over the limit')
  t.equal(JSON.parse(streamed.body).code, 'GW_BODY_TOO_LARGE')

  const buffered = await rawRequest(g.url, chunked.replace('POST', 'GET'))
  t.equal(buffered.status, 413, 'chunked GET (buffered for retry) over the limit')

  const fits = await request(`${g.url}/api/products`, { method: 'POST', body: 'a'.repeat(1024) })
  t.equal(fits.statusCode, 200, 'exactly the limit passes')
  t.equal(((await fits.body.json()) as { body: string }).body.length, 1024)
  t.equal(up.requests.filter((r) => r.method === 'POST' && r.body.length > 1024).length, 0, 'no upstream ever received an oversized body')
})

t.test('slowloris: headers trickled slower than server.headersTimeoutMs are cut off', async (t) => {
  const { g } = await setup(t, { headersTimeoutMs: 300, requestTimeoutMs: 1000 })
  const head = get('/api/products/1')
  // One byte every 50 ms would take several seconds to finish.
  const bytes = head.split('')
  const slow = rawRequest(g.url, bytes, { gapMs: 50, timeoutMs: 8000 })
  // Meanwhile a normal client is served.
  const ok = await request(`${g.url}/api/products/2`)
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  const r = await slow
  t.not(r.ended, 'timeout', 'the gateway closed the connection')
  t.ok(r.ms < bytes.length * 50, `cut off after ${r.ms} ms, before the client finished`)
  t.equal(r.status, 408, 'answered 408')
  t.equal(JSON.parse(r.body).code, 'GW_CLIENT_TIMEOUT')
})

t.test('slow body: a request not received within server.requestTimeoutMs is cut off', async (t) => {
  const { g, up } = await setup(t, { headersTimeoutMs: 200, requestTimeoutMs: 500 })
  const head = 'POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n'
  const r = await rawRequest(g.url, [head, ...'a'.repeat(100).split('')], { gapMs: 50, timeoutMs: 8000 })
  t.not(r.ended, 'timeout', 'the gateway closed the connection')
  t.ok(r.ms < 100 * 50, `cut off after ${r.ms} ms`)
  t.ok(r.status === null || r.status === 408 || r.status >= 500, `answer ${r.status}`)
  t.equal(up.requests.length, 0, 'the upstream never got a complete request')
})
