/**
 * Pass-through proxy routes (SPEC §3, §6) against real upstreams on
 * loopback: prefix rewrite with the query kept, streamed bodies both ways,
 * hop-by-hop headers stripped in both directions, x-forwarded-* and
 * x-request-id, and the 404 / 413 / 502 error bodies.
 */
import t from 'tap'
import { once } from 'node:events'
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { PassThrough, Readable } from 'node:stream'
import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { startUpstream, deadPort, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

interface Echo { url: string, method: string, headers: IncomingHttpHeaders, body: string }

const ERROR_KEYS = ['code', 'error', 'message', 'statusCode']

async function setup (t: { teardown: (fn: () => unknown) => void }, extra: Record<string, unknown> = {}): Promise<{ up: TestUpstream, g: TestGateway }> {
  const up = await startUpstream('product')
  const g = await startGateway({
    ...extra,
    services: {
      product: fastService({ primary: up.url }, { retry: { methods: ['GET', 'HEAD', 'OPTIONS', 'PUT'] } }),
      inventory: fastService({ primary: up.url })
    },
    routes: [
      { type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' },
      { type: 'proxy', prefix: '/inventory', service: 'inventory' }
    ]
  })
  t.teardown(async () => { await g.close(); await up.close() })
  return { up, g }
}

/** Sends raw bytes and reads until the server closes (5 s at most); returns status line, headers (in order) and body. */
async function raw (url: string, text: string): Promise<{ status: string, headers: Array<[string, string]>, body: string }> {
  const { hostname, port } = new URL(url)
  const socket = connect(Number(port), hostname)
  await once(socket, 'connect')
  socket.write(text)
  const chunks: Buffer[] = []
  socket.on('data', (c: Buffer) => chunks.push(c))
  // A response the gateway does not end by closing is a failure, not a hang.
  const timer = setTimeout(() => socket.destroy(), 5000)
  await once(socket, 'close')
  clearTimeout(timer)
  const all = Buffer.concat(chunks).toString('latin1')
  const end = all.indexOf('\r\n\r\n')
  const [status, ...lines] = all.slice(0, end).split('\r\n')
  const headers = lines.map((l): [string, string] => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()])
  return { status: status!, headers, body: all.slice(end + 4) }
}

t.test('prefix rewrite keeps the rest of the path and the query', async (t) => {
  const { g } = await setup(t)
  const cases: Array<[string, string]> = [
    ['/api/products/42?x=1', '/products/42?x=1'],
    ['/api/products?x=1', '/products?x=1'],
    ['/api/products', '/products'],
    ['/api/products/', '/products/'],
    ['/api/products/a/b%20c?q=1&q=2', '/products/a/b%20c?q=1&q=2'],
    ['/inventory/7?fresh=true', '/inventory/7?fresh=true']
  ]
  for (const [from, to] of cases) {
    const res = await request(`${g.url}${from}`)
    const body = await res.body.json() as Echo
    t.equal(res.statusCode, 200, from)
    t.equal(body.url, to, `${from} -> ${to}`)
  }
  const outside = await request(`${g.url}/api/productsXYZ`)
  t.equal(outside.statusCode, 404, 'a path that only starts with the prefix text is not under it')
  await outside.body.dump()
})

t.test('methods, headers and a buffered body pass through', async (t) => {
  const { up, g } = await setup(t)
  const res = await request(`${g.url}/api/products/9`, { method: 'PUT', body: '{"name":"lamp"}', headers: { 'content-type': 'application/json', 'x-custom': 'yes' } })
  const body = await res.body.json() as Echo
  t.equal(res.statusCode, 200)
  t.equal(body.method, 'PUT')
  t.equal(body.body, '{"name":"lamp"}')
  t.equal(up.requests[0]!.headers['x-custom'], 'yes')
  t.equal(up.requests[0]!.headers['content-type'], 'application/json')
  t.equal(up.requests[0]!.headers.host, new URL(up.url).host, 'Host is the origin\'s')
})

t.test('a chunked POST body sent from a Readable arrives intact upstream', async (t) => {
  const { up, g } = await setup(t)
  const chunks = Array.from({ length: 8 }, (_, i) => randomBytes(16384 + i))
  async function * slowly (): AsyncGenerator<Buffer> {
    for (const c of chunks) {
      yield c
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
  const res = await request(`${g.url}/api/products/upload`, { method: 'POST', body: Readable.from(slowly()), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  t.equal(up.requests.length, 1)
  const got = up.requests[0]!.body
  const sent = Buffer.concat(chunks)
  t.equal(got.length, sent.length, 'same length')
  t.ok(got.equals(sent), 'same bytes')
})

t.test('request and response bodies are streamed, not buffered', async (t) => {
  // An upstream of its own: it reports the first request bytes as they
  // arrive and answers in two parts, the second only when told to.
  const firstBytes = new PassThrough()
  let finishResponse: () => void = () => {}
  const server = createServer((req, res) => {
    req.once('data', (c: Buffer) => firstBytes.write(c))
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('part one;')
      finishResponse = () => res.end('part two')
    })
    req.resume()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const g = await startGateway({
    // No request buffering: every body streams (bodies up to it are read first, SPEC §17).
    server: { requestBufferBytes: 0 },
    services: { product: fastService({ primary: origin }, { healthCheck: { path: '/', intervalMs: 60000 } }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(async () => {
    await g.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })

  const body = new PassThrough()
  const pending = request(`${g.url}/api/products/stream`, { method: 'POST', body, headers: { 'content-type': 'text/plain' } })
  body.write('first chunk;')
  const [seen] = await once(firstBytes, 'data') as [Buffer]
  t.equal(seen.toString(), 'first chunk;', 'the upstream has the first chunk while the client is still sending')
  body.end('last chunk')
  const res = await pending
  t.equal(res.statusCode, 200)
  const it = res.body[Symbol.asyncIterator]()
  const first = await it.next()
  t.equal(Buffer.from(first.value as Buffer).toString(), 'part one;', 'the client has the first part while the upstream is still answering')
  finishResponse()
  let rest = ''
  for (let r = await it.next(); r.done !== true; r = await it.next()) rest += Buffer.from(r.value as Buffer).toString()
  t.equal(rest, 'part two')
})

t.test('hop-by-hop request headers are not forwarded', async (t) => {
  const { up, g } = await setup(t)
  const { port } = new URL(g.url)
  let socket: Socket | null = null
  t.teardown(() => { socket?.destroy() })
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/api/products/hop',
      agent: false,
      headers: {
        connection: 'keep-alive, x-hop-secret',
        'x-hop-secret': 'for the gateway only',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        upgrade: 'h2c',
        'proxy-connection': 'keep-alive',
        'transfer-encoding': 'chunked',
        'x-end-to-end': 'kept'
      }
    }, resolve)
    req.on('error', reject)
    req.on('socket', (s) => { socket = s })
    req.write('one,')
    req.end('two')
  })
  res.resume()
  await once(res, 'end')
  t.equal(res.statusCode, 200)
  const h = up.requests[0]!.headers
  for (const name of ['x-hop-secret', 'keep-alive', 'te', 'upgrade', 'proxy-connection']) t.notOk(name in h, `${name} is not forwarded`)
  t.notMatch(String(h.connection ?? ''), /x-hop-secret/, 'the client\'s Connection header is not forwarded')
  // A chunked body this small is buffered (server.requestBufferBytes), so it goes on with its length.
  t.equal(h['content-length'], '7', 'the upstream request has its own framing')
  t.equal(h['transfer-encoding'], undefined, 'the client\'s Transfer-Encoding is not forwarded')
  t.equal(up.requests[0]!.body.toString(), 'one,two', 'the body is re-framed intact')
  t.equal(h['x-end-to-end'], 'kept')
})

t.test('hop-by-hop response headers are not forwarded', async (t) => {
  const { up, g } = await setup(t)
  up.handler = (_req, res) => {
    res.writeHead(200, {
      'content-type': 'text/plain',
      connection: 'keep-alive, x-up-secret',
      'x-up-secret': 'for the gateway only',
      'keep-alive': 'timeout=5',
      te: 'trailers',
      upgrade: 'h2c',
      'proxy-connection': 'keep-alive',
      'transfer-encoding': 'chunked',
      'x-up-visible': 'yes'
    })
    res.write('hello ')
    res.end('from upstream')
  }
  // HTTP/1.0: the gateway cannot chunk its answer, so a Transfer-Encoding
  // header on it could only have been copied from the upstream.
  const { host } = new URL(g.url)
  const res = await raw(g.url, `GET /api/products/hop HTTP/1.0\r\nHost: ${host}\r\n\r\n`)
  t.match(res.status, /^HTTP\/1\.1 200 /)
  const names = res.headers.map(([k]) => k)
  for (const name of ['x-up-secret', 'keep-alive', 'te', 'upgrade', 'proxy-connection', 'transfer-encoding']) t.notOk(names.includes(name), `${name} is not forwarded`)
  const connection = res.headers.filter(([k]) => k === 'connection').map(([, v]) => v)
  t.strictSame(connection, ['close'], 'Connection is the gateway\'s own')
  t.ok(res.headers.some(([k, v]) => k === 'x-up-visible' && v === 'yes'), 'end-to-end headers are forwarded')
  t.equal(res.body, 'hello from upstream')
})

t.test('x-forwarded-for, -proto and -host are added', async (t) => {
  const { up, g } = await setup(t)
  const host = new URL(g.url).host
  await (await request(`${g.url}/api/products/1`)).body.dump()
  await (await request(`${g.url}/api/products/2`, { headers: { 'x-forwarded-for': '203.0.113.7' } })).body.dump()
  const [first, second] = up.requests
  t.equal(first!.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(first!.headers['x-forwarded-proto'], 'http')
  t.equal(first!.headers['x-forwarded-host'], host)
  t.equal(second!.headers['x-forwarded-for'], '203.0.113.7, 127.0.0.1', 'appended to the client\'s chain')
})

t.test('x-request-id is taken from the client or generated, sent upstream and returned', async (t) => {
  const { up, g } = await setup(t)
  const given = await request(`${g.url}/api/products/1`, { headers: { 'x-request-id': 'client-id-123' } })
  await given.body.dump()
  t.equal(given.headers['x-request-id'], 'client-id-123', 'returned to the client')
  t.equal(up.requests[0]!.headers['x-request-id'], 'client-id-123', 'sent upstream')

  const generated = await request(`${g.url}/api/products/2`)
  await generated.body.dump()
  const id = generated.headers['x-request-id']
  t.type(id, 'string')
  t.ok(String(id).length >= 8, 'a generated id')
  t.equal(up.requests[1]!.headers['x-request-id'], id, 'the same id upstream and on the response')

  const again = await request(`${g.url}/api/products/3`)
  await again.body.dump()
  t.not(again.headers['x-request-id'], id, 'each request gets its own id')

  const insane = 'x'.repeat(300)
  const replaced = await request(`${g.url}/api/products/4`, { headers: { 'x-request-id': insane } })
  await replaced.body.dump()
  t.not(replaced.headers['x-request-id'], insane, 'an unusable client id is replaced')
  t.equal(up.requests[3]!.headers['x-request-id'], replaced.headers['x-request-id'])
})

t.test('no matching route: 404 GW_NO_ROUTE', async (t) => {
  const { up, g } = await setup(t)
  const res = await request(`${g.url}/nothing/here?x=1`, { headers: { 'x-request-id': 'lost-1' } })
  const body = await res.body.json() as Record<string, unknown>
  t.equal(res.statusCode, 404)
  t.match(res.headers['content-type'], /^application\/json/)
  t.strictSame(Object.keys(body).sort(), ERROR_KEYS)
  t.match(body, { statusCode: 404, code: 'GW_NO_ROUTE', error: 'Not Found' })
  t.type(body.message, 'string')
  t.equal(res.headers['x-request-id'], 'lost-1', 'errors carry the request id too')
  t.equal(up.requests.length, 0)
})

t.test('a body over server.bodyLimitBytes: 413 GW_BODY_TOO_LARGE', async (t) => {
  const { up, g } = await setup(t, { server: { bodyLimitBytes: 1024 } })
  const check = async (label: string, res: Awaited<ReturnType<typeof request>>): Promise<void> => {
    const body = await res.body.json() as Record<string, unknown>
    t.equal(res.statusCode, 413, label)
    t.strictSame(Object.keys(body).sort(), ERROR_KEYS, `${label}: error shape`)
    t.match(body, { statusCode: 413, code: 'GW_BODY_TOO_LARGE', error: 'Payload Too Large' }, label)
  }
  const chunked = (): Readable => Readable.from([Buffer.alloc(600, 'a'), Buffer.alloc(600, 'b'), Buffer.alloc(600, 'c')])

  await check('content-length over the limit', await request(`${g.url}/api/products/big`, { method: 'POST', body: Buffer.alloc(4096, 'x') }))
  await check('chunked body over the limit (streamed method)', await request(`${g.url}/api/products/big`, { method: 'POST', body: chunked() }))
  await check('chunked body over the limit (buffered method)', await request(`${g.url}/api/products/big`, { method: 'PUT', body: chunked() }))
  t.equal(up.requests.length, 0, 'no oversized request reached the upstream complete')

  const ok = await request(`${g.url}/api/products/small`, { method: 'POST', body: Buffer.alloc(1024, 'y') })
  await ok.body.dump()
  t.equal(ok.statusCode, 200, 'a body at the limit passes')
  t.equal(up.requests[0]!.body.length, 1024)
})

t.test('client-side body failures never count against the origin', async (t) => {
  // Probes are far apart, so only real traffic could move the breaker.
  const up = await startUpstream('product')
  const g = await startGateway({
    server: { bodyLimitBytes: 1024 },
    // PUT is retryable here, so its body is buffered; POST's is streamed.
    services: { product: fastService({ primary: up.url }, { healthCheck: { intervalMs: 60000, timeoutMs: 2000 }, retry: { methods: ['GET', 'PUT'] } }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(async () => { await g.close(); await up.close() })
  const origin = (): unknown => g.gw.registry.snapshot('product')!.deployments.default!.origins.primary
  const volume = 12 // over the breaker's volumeThreshold (5)

  for (let i = 0; i < volume; i++) {
    const res = await request(`${g.url}/api/products/big`, { method: 'POST', body: Readable.from([Buffer.alloc(600), Buffer.alloc(600)]) })
    await res.body.dump()
    t.equal(res.statusCode, 413)
  }
  t.match(origin(), { healthy: true, breaker: 'closed' }, 'oversized bodies are the client\'s fault')

  // Clients that hang up in the middle of a streamed upload.
  const { port } = new URL(g.url)
  for (const method of ['POST', 'PUT']) {
    for (let i = 0; i < volume; i++) {
      const socket = connect(Number(port), '127.0.0.1')
      await once(socket, 'connect')
      socket.write(`${method} /api/products/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`)
      socket.destroy()
    }
  }
  // Every aborted request ends in the error handler, which logs its code.
  await until(() => g.logs.filter((l) => l.reqId !== undefined && typeof l.code === 'string' && l.code.startsWith('GW_')).length >= 2 * volume)
  t.match(origin(), { healthy: true, breaker: 'closed' }, 'aborted uploads are the client\'s fault')
  t.notOk(up.requests.some((r) => r.url === '/products/upload'), 'no truncated upload reached the upstream as complete')
  const failures = g.logs.filter((l) => (l.level as number) >= 50)
  t.strictSame(failures.map((l) => l.msg), [], 'and are not logged as errors')
  const good = await request(`${g.url}/api/products/after`, { method: 'POST', body: 'fine' })
  await good.body.dump()
  t.equal(good.statusCode, 200)
})

/** Polls `check` every 10 ms for up to 5 s. */
async function until (check: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in 5 s')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

t.test('upstream down and no secondary: 502 GW_UPSTREAM_FAILED without details', async (t) => {
  const port = await deadPort()
  const g = await startGateway({
    services: { product: fastService({ primary: `http://127.0.0.1:${port}` }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(() => g.close())
  for (const method of ['GET', 'POST'] as const) {
    const res = await request(`${g.url}/api/products/1`, { method, ...(method === 'POST' ? { body: '{}' } : {}) })
    const text = await res.body.text()
    const body = JSON.parse(text) as Record<string, unknown>
    t.equal(res.statusCode, 502, method)
    t.strictSame(Object.keys(body).sort(), ERROR_KEYS, `${method}: error shape`)
    t.match(body, { statusCode: 502, code: 'GW_UPSTREAM_FAILED', error: 'Bad Gateway' })
    t.notMatch(text, /\bat .*\.(ts|js):\d+/, 'no stack trace')
    t.notMatch(text, /ECONNREFUSED|127\.0\.0\.1/, 'no upstream details')
    t.type(res.headers['x-request-id'], 'string')
  }
})
