// Hostile and broken clients (SPEC §17), over raw sockets against real
// upstreams: slow request bodies never blame an origin, Host is validated,
// unserved methods get 405, pipelined requests are answered in order, and
// cut answers are still logged and counted.
import t from 'tap'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { request } from 'undici'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { rawRequest, get, type RawAnswer } from './helpers/raw-http.js'

interface CountingUpstream {
  url: string
  /** Request heads seen (method and url), before any body: what reached the origin at all. */
  seen: string[]
  /** Requests whose body ended, answered. */
  answered: string[]
  /** Swaps how a complete request is answered (default: echo name, url and body). */
  answer: ((req: IncomingMessage, res: ServerResponse, body: string) => void) | null
  close(): Promise<void>
}

/** A node:http upstream that records every request head as it arrives (a partial body counts). */
async function countingUpstream (name: string): Promise<CountingUpstream> {
  const up: CountingUpstream = { url: '', seen: [], answered: [], answer: null, close: async () => {} }
  const server: Server = createServer((req, res) => {
    if (req.url === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}')
      return
    }
    up.seen.push(`${req.method} ${req.url}`)
    let body = ''
    req.setEncoding('latin1')
    req.on('data', (c: string) => { body += c })
    req.on('error', () => {})
    req.on('end', () => {
      up.answered.push(`${req.method} ${req.url}`)
      if (up.answer !== null) {
        up.answer(req, res, body)
        return
      }
      const s = JSON.stringify({ name, url: req.url, bytes: body.length })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) }).end(s)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  up.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  up.close = async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
  return up
}

const HEALTH = { intervalMs: 100, timeoutMs: 1000, unhealthyThreshold: 3, healthyThreshold: 2 }

async function setup (t: { teardown(fn: () => Promise<void>): void }, server: Record<string, unknown> = {}, extraRoutes: unknown[] = []): Promise<{ primary: CountingUpstream, secondary: CountingUpstream, g: TestGateway }> {
  const primary = await countingUpstream('primary')
  const secondary = await countingUpstream('secondary')
  const g = await startGateway({
    server,
    services: { product: fastService({ primary: primary.url, secondary: secondary.url }, { timeoutMs: 1000, healthCheck: HEALTH }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }, ...extraRoutes]
  })
  t.teardown(async () => { await g.close(); await primary.close(); await secondary.close() })
  return { primary, secondary, g }
}

const head = (method: string, path: string, extra: string[]): string => [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', ...extra, 'Connection: close', '', ''].join('\r\n')

t.test('slow request bodies: 408 or a close for the client, nothing against a healthy origin', async (t) => {
  // The attempt deadline (1 s) is shorter than the slow clients take: before
  // SPEC §17 each of them was a 504 and a failure counted against the primary.
  const { primary, secondary, g } = await setup(t, { requestBufferBytes: 1024, clientBodyTimeoutMs: 400, requestTimeoutMs: 2500, headersTimeoutMs: 2000 })
  const group = [...g.gw.registry.get('product')!.groups.values()][0]!
  const slow: Array<{ kind: string, p: Promise<RawAnswer> }> = []
  for (let i = 0; i < 8; i++) {
    // Buffered size, trickled one byte every 60 ms (6 s for the whole body).
    slow.push({ kind: 'small-trickle', p: rawRequest(g.url, [head('POST', `/api/products/slow-small-${i}`, ['Content-Length: 100']), ...'a'.repeat(100).split('')], { gapMs: 60, timeoutMs: 15000 }) })
  }
  for (let i = 0; i < 4; i++) {
    // Buffered size, chunked, stalled after one chunk.
    slow.push({ kind: 'small-chunked-stall', p: rawRequest(g.url, head('POST', `/api/products/slow-chunked-${i}`, ['Transfer-Encoding: chunked']) + '5\r\nhello\r\n', { timeoutMs: 15000 }) })
  }
  for (let i = 0; i < 6; i++) {
    // Streamed size: half the body at once, then nothing.
    slow.push({ kind: 'large-stall', p: rawRequest(g.url, head('POST', `/api/products/slow-large-${i}`, ['Content-Length: 4000']) + 'b'.repeat(2000), { timeoutMs: 15000 }) })
  }
  for (let i = 0; i < 4; i++) {
    // Streamed size, trickled in small pieces (each gap under the body timeout).
    slow.push({ kind: 'large-trickle', p: rawRequest(g.url, [head('POST', `/api/products/slow-trickle-${i}`, ['Content-Length: 4000']) + 'c'.repeat(2000), ...Array.from({ length: 100 }, () => 'c'.repeat(20))], { gapMs: 100, timeoutMs: 15000 }) })
  }
  t.ok(slow.length >= 20, `${slow.length} slow clients`)

  let settled = false
  const all = Promise.all(slow.map((s) => s.p)).finally(() => { settled = true })
  // A normal client keeps sending meanwhile: every answer 200 from the primary.
  let normal = 0
  const wrong: string[] = []
  for (let i = 0; i < 400 && !settled; i++) {
    const post = i % 2 === 1
    const res = await request(`${g.url}/api/products/normal-${i}`, post ? { method: 'POST', body: 'x'.repeat(i % 3 === 0 ? 3000 : 50) } : {})
    const text = await res.body.text()
    normal++
    if (res.statusCode !== 200 || JSON.parse(text).name !== 'primary') wrong.push(`${i}: ${res.statusCode} ${text}`)
  }
  const answers = await all
  t.ok(normal > 0, `${normal} normal requests during the attack`)
  t.same(wrong, [], 'every normal request: 200 from the primary')

  for (const [i, r] of answers.entries()) {
    const kind = slow[i]!.kind
    t.not(r.ended, 'timeout', `${kind} ${i}: the gateway ended it`)
    t.ok(r.status === 408 || r.status === null, `${kind} ${i}: 408 or a closed connection (${r.status})`)
    if (r.status === 408) t.equal(JSON.parse(r.body).code, 'GW_CLIENT_TIMEOUT', `${kind} ${i}: GW_CLIENT_TIMEOUT`)
  }
  t.ok(answers.some((r) => r.status === 408), 'slow clients are told 408')
  const reached = (prefix: string, up: CountingUpstream): string[] => up.seen.filter((s) => s.includes(prefix))
  t.same(reached('slow-small', primary), [], 'trickled buffered-size bodies never reached the origin')
  t.same(reached('slow-chunked', primary), [], 'stalled small chunked bodies never reached the origin')
  t.same(secondary.seen, [], 'nothing was retried on, or switched to, the secondary')
  t.same(primary.answered.filter((s) => s.includes('slow-')), [], 'the origin never got a slow body whole')

  t.equal(group.active, group.primary, 'the primary is still active')
  t.ok(group.primary.healthy, 'the primary is healthy')
  t.equal(group.primary.breakerState, 'closed', 'its breaker is closed')
  const ready = await request(`${g.adminUrl}/readyz`)
  t.equal(ready.statusCode, 200, '/readyz 200')
  await ready.body.dump()
  t.same(g.logs.filter((l) => l.event === 'failover' || l.event === 'breaker' || l.event === 'origin_health'), [], 'no failover, breaker or health transition')
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.notMatch(metrics, /gateway_upstream_requests_total\{[^}]*outcome="timeout"[^}]*\} [1-9]/, 'no upstream attempt timed out')
})

t.test('a bad chunk size is a clean 400 from the gateway; the origin never sees the request', async (t) => {
  const { primary, g } = await setup(t)
  const r = await rawRequest(g.url, head('POST', '/api/products/bad-chunk', ['Transfer-Encoding: chunked']) + '3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n')
  t.equal(r.status, 400)
  t.equal(JSON.parse(r.body).code, 'GW_BAD_REQUEST')
  t.equal(r.ended, 'closed')
  t.same(primary.seen.filter((s) => s.includes('bad-chunk')), [], 'nothing reached the origin')
})

t.test('a client hanging up mid-upload is not the origin\'s fault', async (t) => {
  const { primary, secondary, g } = await setup(t, { requestBufferBytes: 1024 })
  const group = [...g.gw.registry.get('product')!.groups.values()][0]!
  const port = Number(new URL(g.url).port)
  for (let i = 0; i < 8; i++) {
    // Streamed size: the origin has part of it when the client goes away.
    await new Promise<void>((resolve) => {
      const sock = connect(port, '127.0.0.1', () => sock.write(head('POST', `/api/products/hangup-${i}`, ['Content-Length: 5000', `x-request-id: hangup-${i}`]) + 'd'.repeat(2000)))
      sock.on('error', () => {})
      let n = 0
      const poll = setInterval(() => {
        if (primary.seen.includes(`POST /products/hangup-${i}`) || ++n > 1000) {
          clearInterval(poll)
          sock.destroy()
          resolve()
        }
      }, 10)
    })
    await g.waitForLog((l) => l.msg === 'request' && l.reqId === `hangup-${i}`, 10000)
  }
  t.equal(primary.seen.filter((s) => s.includes('hangup')).length, 8, 'the origin saw each upload start')
  t.equal(group.primary.breakerState, 'closed', 'breaker closed')
  t.equal(group.active, group.primary, 'no switch')
  t.same(secondary.seen, [], 'nothing retried on the secondary')
  t.same(g.logs.filter((l) => l.event === 'failover' || l.event === 'breaker'), [], 'no transition logged')
})

t.test('Host: missing, repeated or invalid is 400 and reaches no origin', async (t) => {
  const { primary, g } = await setup(t)
  const cases: Record<string, string[]> = {
    'no Host (HTTP/1.1)': [],
    'two Host headers, same value': ['Host: a.example', 'Host: a.example'],
    'two Host headers, different values': ['Host: a.example', 'host: b.example'],
    'a space and a slash': ['Host: a b/c'],
    'userinfo': ['Host: user@a.example'],
    'a path': ['Host: a.example/x'],
    'an empty value': ['Host: '],
    'a port that is not a number': ['Host: a.example:80x'],
    'two colons': ['Host: a.example:80:90'],
    'an unclosed IPv6 literal': ['Host: [::1'],
    'IPv6 without brackets': ['Host: ::1']
  }
  for (const [name, hosts] of Object.entries(cases)) {
    const r = await rawRequest(g.url, ['GET /api/products/host-bad HTTP/1.1', ...hosts, 'Connection: close', '', ''].join('\r\n'))
    t.equal(r.status, 400, `${name}: 400`)
    t.equal(r.status === 400 ? JSON.parse(r.body).code : null, 'GW_BAD_REQUEST', `${name}: GW_BAD_REQUEST`)
  }
  t.same(primary.seen.filter((s) => s.includes('host-bad')), [], 'no refused request reached the origin')

  const good = ['Host: a.example', 'Host: a.example:8080', 'Host: 127.0.0.1:80', 'Host: [::1]:8080', 'Host: [2001:db8::1]', 'Host: xn--bcher-kva.example', 'Host: A-B_c.example~']
  for (const h of good) {
    const r = await rawRequest(g.url, ['GET /api/products/host-good HTTP/1.1', h, 'Connection: close', '', ''].join('\r\n'))
    t.equal(r.status, 200, `${h}: 200`)
  }
  const http10 = await rawRequest(g.url, 'GET /api/products/host-10 HTTP/1.0\r\n\r\n')
  t.equal(http10.status, 200, 'HTTP/1.0 without Host: served')
})

t.test('CONNECT, TRACE and unserved methods: 405 GW_METHOD_NOT_ALLOWED with Allow', async (t) => {
  const { primary, g } = await setup(t, {}, [
    { type: 'aggregate', path: '/views/:id', sections: { product: { service: 'product', path: '/products/{id}', required: true } } },
    { type: 'aggregate', path: '/api/products/view/:id', sections: { product: { service: 'product', path: '/products/{id}', required: true } } }
  ])
  const PROXY = 'DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT'
  const check = (r: RawAnswer, allow: string, name: string): void => {
    t.equal(r.status, 405, `${name}: 405`)
    t.equal(r.headers.allow, allow, `${name}: Allow`)
    t.equal(r.status === 405 ? JSON.parse(r.body).code : null, 'GW_METHOD_NOT_ALLOWED', `${name}: code`)
  }
  const connectR = await rawRequest(g.url, 'CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n')
  check(connectR, PROXY, 'CONNECT')
  t.equal(connectR.ended, 'closed', 'CONNECT: then the connection is closed')
  check(await rawRequest(g.url, head('TRACE', '/api/products/1', [])), PROXY, 'TRACE on a proxy route')
  check(await rawRequest(g.url, head('PROPFIND', '/api/products', [])), PROXY, 'PROPFIND on a proxy prefix')
  check(await rawRequest(g.url, head('PURGE', '/api/products/1', ['Content-Length: 3']) + 'abc'), PROXY, 'PURGE with a body')
  check(await rawRequest(g.url, head('POST', '/views/1', ['Content-Length: 2']) + '{}'), 'GET, HEAD', 'POST on a GET aggregate route')
  check(await rawRequest(g.url, head('TRACE', '/views/1', [])), 'GET, HEAD', 'TRACE on an aggregate route')
  check(await rawRequest(g.url, head('TRACE', '/nowhere', [])), PROXY, 'TRACE on a path no route matches')
  check(await rawRequest(g.url, head('TRACE', '/api/products/view/1', [])), PROXY, 'TRACE on an aggregate inside a proxy prefix')
  const inside = await rawRequest(g.url, head('POST', '/api/products/view/1', ['Content-Length: 2']) + '{}')
  t.equal(inside.status, 200, 'POST on an aggregate path inside a proxy prefix still reaches the proxy')
  const notFound = await rawRequest(g.url, get('/nowhere'))
  t.equal(notFound.status, 404, 'a served method on a path no route matches: still 404')
  t.equal(JSON.parse(notFound.body).code, 'GW_NO_ROUTE')
  t.same(primary.seen.filter((s) => !s.startsWith('GET ') && s !== 'POST /products/view/1'), [], 'no refused method reached the origin')
  const line = await g.waitForLog((l) => l.msg === 'request' && l.method === 'TRACE' && l.url === '/nowhere')
  t.equal(line.status, 405, 'a 405 has its access-log line')
})

t.test('pipelining: a valid request followed by garbage gets its answer first, then the 400', async (t) => {
  const { primary, g } = await setup(t)
  // The origin holds its answers until the gateway has seen the garbage.
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  primary.answer = (req, res, body) => {
    held.then(() => {
      const s = JSON.stringify({ url: req.url, body })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) }).end(s)
    }).catch(() => {})
  }
  const data = 'POST /api/products/pipe-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello' +
    'GET /api/products/pipe-2 HTTP/1.1\r\nHost: x\r\n\r\n' +
    'GARBAGE\r\n\r\n'
  const answer = rawRequest(g.url, data, { timeoutMs: 10000 })
  await g.waitForLog((l) => l.event === 'client_error', 10000)
  release()
  const r = await answer
  const statuses = [...r.raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]))
  t.same(statuses, [200, 200, 400], 'both answers, in order, then the 400')
  t.match(r.raw, /"url":"\/products\/pipe-1","body":"hello"[\s\S]*"url":"\/products\/pipe-2"[\s\S]*GW_BAD_REQUEST/, 'each answer is its own request\'s')
  t.equal(r.ended, 'closed', 'then the connection is closed')
  t.same(primary.answered.filter((s) => s.includes('pipe')).sort(), ['GET /products/pipe-2', 'POST /products/pipe-1'], 'both reached the origin once')
})

t.test('a cut answer is logged once with aborted: true and counted', async (t) => {
  const { primary, g } = await setup(t)
  // A large answer written as fast as the gateway takes it.
  primary.answer = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    const chunk = Buffer.alloc(64 * 1024, 1)
    let left = 256 // 16 MiB
    const more = (): void => {
      while (left > 0) {
        left--
        if (!res.write(chunk)) {
          res.once('drain', more)
          return
        }
      }
      res.end()
    }
    res.on('error', () => {})
    more()
  }
  const port = Number(new URL(g.url).port)
  // The client reads the first bytes, then goes away.
  await new Promise<void>((resolve) => {
    const sock: Socket = connect(port, '127.0.0.1', () => sock.write('GET /api/products/big HTTP/1.1\r\nHost: x\r\nx-request-id: cut-1\r\n\r\n'))
    sock.on('error', () => {})
    sock.once('data', () => { sock.destroy(); resolve() })
  })
  const line = await g.waitForLog((l) => l.msg === 'request' && l.reqId === 'cut-1', 10000)
  t.equal(line.status, 200, 'the status sent')
  t.equal(line.aborted, true, 'aborted: true')

  // A client that goes away before any answer: 499, aborted.
  primary.answer = () => {}
  await new Promise<void>((resolve) => {
    const sock: Socket = connect(port, '127.0.0.1', () => sock.write('GET /api/products/never HTTP/1.1\r\nHost: x\r\nx-request-id: cut-2\r\n\r\n'))
    sock.on('error', () => {})
    const poll = setInterval(() => {
      if (primary.seen.includes('GET /products/never')) {
        clearInterval(poll)
        sock.destroy()
        resolve()
      }
    }, 10)
  })
  const gone = await g.waitForLog((l) => l.msg === 'request' && l.reqId === 'cut-2', 10000)
  t.equal(gone.status, 499, 'nothing was sent: 499')
  t.equal(gone.aborted, true)

  // A finished answer has no aborted key; each request has one line.
  primary.answer = null
  const ok = await request(`${g.url}/api/products/fine`, { headers: { 'x-request-id': 'fine-1' } })
  await ok.body.dump()
  const fine = await g.waitForLog((l) => l.msg === 'request' && l.reqId === 'fine-1')
  t.equal(fine.aborted, undefined, 'a finished answer: no aborted key')
  for (const id of ['cut-1', 'cut-2', 'fine-1']) t.equal(g.logs.filter((l) => l.msg === 'request' && l.reqId === id).length, 1, `${id}: exactly one line`)
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.match(metrics, /gateway_requests_total\{route="\/api\/products",method="GET",status="499"\} 1/, 'the 499 is counted')
  t.match(metrics, /gateway_requests_total\{route="\/api\/products",method="GET",status="200"\} 2/, 'the cut 200 is counted with the finished one')
})

t.test('an origin that takes a streamed upload and never answers is still late: 504, counted against it', async (t) => {
  // The origin reads nothing and answers nothing; its health checks pass.
  const sockets = new Set<Socket>()
  const mute = createServer((req, res) => {
    if (req.url === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}')
      return
    }
    req.pause()
  })
  mute.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', () => resolve()))
  const g = await startGateway({
    server: { requestBufferBytes: 1024 },
    services: { product: fastService({ primary: `http://127.0.0.1:${(mute.address() as AddressInfo).port}` }, { timeoutMs: 300, healthCheck: HEALTH }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(async () => {
    await g.close()
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => mute.close(resolve))
  })
  const r = await rawRequest(g.url, head('POST', '/api/products/mute', ['Content-Length: 900000']) + 'e'.repeat(900000), { timeoutMs: 15000 })
  t.equal(r.status, 504, 'the whole body was sent promptly: 504')
  t.equal(JSON.parse(r.body).code, 'GW_DEADLINE')
  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  t.match(metrics, /gateway_upstream_requests_total\{[^}]*outcome="timeout"[^}]*\} 1/, 'counted as the origin\'s timeout')
})
