// Malformed and smuggling requests over raw sockets: the gateway answers
// 400 GW_BAD_REQUEST (SPEC §6 JSON body) and closes, no upstream sees a
// smuggled request, and the gateway keeps serving.
import t from 'tap'
import { request } from 'undici'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startUpstream, type TestUpstream } from './helpers/upstream.js'
import { rawRequest } from './helpers/raw-http.js'

const SMUGGLED = 'GET /api/products/smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
const POST = 'POST /api/products/1 HTTP/1.1\r\nHost: x\r\n'

// name -> raw bytes; each must be refused with 400 and a closed connection.
const MALFORMED: Record<string, string> = {
  'garbage request line': 'GARBAGE\r\n\r\n',
  'unknown HTTP version': 'GET /api/products/1 HTTP/9.9\r\nHost: x\r\n\r\n',
  'lower-case method': 'get /api/products/1 HTTP/1.1\r\nHost: x\r\n\r\n',
  'space in a header name': 'GET /api/products/1 HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n',
  'control character in a header value': 'GET /api/products/1 HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n',
  'NUL in a header value': 'GET /api/products/1 HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n',
  'bare CR in a header value (injection)': 'GET /api/products/1 HTTP/1.1\r\nHost: x\r\nX-A: a\rInjected: b\r\n\r\n',
  'bare LF line endings': 'GET /api/products/1 HTTP/1.1\nHost: x\n\n',
  'obsolete header folding': 'GET /api/products/1 HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n',
  'non-ASCII bytes in the path': 'GET /api/products/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n',
  'space in the path': 'GET /api/products/a b HTTP/1.1\r\nHost: x\r\n\r\n',
  'Content-Length + Transfer-Encoding (CL.TE)': `${POST}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'Transfer-Encoding + Content-Length (TE.CL)': `${POST}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'two different Content-Lengths': `${POST}Content-Length: 4\r\nContent-Length: 50\r\n\r\nabcd${SMUGGLED}`,
  'negative Content-Length': `${POST}Content-Length: -1\r\n\r\n`,
  'Content-Length in exponent form': `${POST}Content-Length: 1e3\r\n\r\n`,
  'Transfer-Encoding: xchunked': `${POST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'Transfer-Encoding: chunked, identity': `${POST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'space before the colon of Transfer-Encoding': `${POST}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'Transfer-Encoding twice': `${POST}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
  'invalid chunk size': `${POST}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n${SMUGGLED}`,
  'chunk longer than its size': `${POST}Transfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n${SMUGGLED}`,
  'bare LF after a chunk extension': `${POST}Transfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n${SMUGGLED}`
}

/** A gateway with one proxy route to a real `product` upstream (no health checks). */
async function productGateway (t: { teardown(fn: () => Promise<void>): void }): Promise<{ up: TestUpstream, g: TestGateway }> {
  const up = await startUpstream('product')
  const g = await startGateway({
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  }, { start: false })
  t.teardown(async () => { await g.close(); await up.close() })
  return { up, g }
}

t.test('malformed requests: 400 GW_BAD_REQUEST, connection closed, nothing smuggled', async (t) => {
  const { up, g } = await productGateway(t)

  for (const [name, data] of Object.entries(MALFORMED)) {
    const r = await rawRequest(g.url, Buffer.from(data, 'latin1'), { timeoutMs: 3000 })
    t.equal(r.status, 400, `${name}: 400`)
    t.same(JSON.parse(r.body), { statusCode: 400, code: 'GW_BAD_REQUEST', error: 'Bad Request', message: 'malformed HTTP request' }, `${name}: SPEC body`)
    t.equal(r.ended, 'closed', `${name}: connection closed`)
    t.equal((r.raw.match(/HTTP\/1\.1 /g) ?? []).length, 1, `${name}: exactly one response`)
  }
  t.same(up.requests.filter((r) => r.url.includes('smuggled')), [], 'no upstream ever saw the smuggled request')

  const missingHost = await rawRequest(g.url, 'GET /api/products/1 HTTP/1.1\r\nConnection: close\r\n\r\n')
  t.equal(missingHost.status, 400, 'HTTP/1.1 without Host: 400')
  t.equal(JSON.parse(missingHost.body).code, 'GW_BAD_REQUEST')

  const after = await request(`${g.url}/api/products/after`)
  t.equal(after.statusCode, 200, 'the gateway still serves')
  await after.body.dump()
})

t.test('bytes after a closing request are dropped, the request itself is answered', async (t) => {
  const { up, g } = await productGateway(t)

  const closing = await rawRequest(g.url, `GET /api/products/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n${SMUGGLED}`)
  t.equal(closing.status, 200, 'Connection: close + more bytes: the first request gets its answer')
  t.equal(closing.ended, 'closed')
  const http10 = await rawRequest(g.url, `POST /api/products/1 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`)
  t.equal(http10.status, 200, 'HTTP/1.0 + more bytes: answered, then closed')
  t.equal((http10.raw.match(/HTTP\/1\.1 /g) ?? []).length, 1, 'one response only')
  t.same(up.requests.map((r) => r.url), ['/products/1', '/products/1'], 'the trailing request was never forwarded')

  const pipelined = await rawRequest(g.url, 'GET /api/products/a HTTP/1.1\r\nHost: x\r\n\r\nGET /api/products/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  t.equal((pipelined.raw.match(/HTTP\/1\.1 200/g) ?? []).length, 2, 'honest pipelining still works')
})
