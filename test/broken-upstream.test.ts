// Upstreams that break HTTP, each a raw `net` server behind its own proxy
// route. Before the response starts, the client gets a clean 502/504 with
// the SPEC §6 body; once the body is streaming, the only honest signal is
// a cut connection, and the client must see an error, never a hang. After
// each, the gateway still serves (a follow-up request gets 200).
import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import { request } from 'undici'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startUpstream } from './helpers/upstream.js'
import { rawRequest, get, startRawUpstream, type RawUpstream } from './helpers/raw-http.js'

type Behaviour = (sock: Socket) => void

// Answered before the response starts: status and code the client gets.
const CLEAN: Record<string, [Behaviour, number, string]> = {
  'accepts and never answers': [() => {}, 504, 'GW_DEADLINE'],
  'closes without answering': [(s) => s.destroy(), 502, 'GW_UPSTREAM_FAILED'],
  'resets without answering': [(s) => s.resetAndDestroy(), 502, 'GW_UPSTREAM_FAILED'],
  'answers garbage': [(s) => s.end('HELLO THERE\r\n\r\n'), 502, 'GW_UPSTREAM_FAILED'],
  'content-length not a number': [(s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello'), 502, 'GW_UPSTREAM_FAILED'],
  'two different content-lengths': [(s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello'), 502, 'GW_UPSTREAM_FAILED'],
  'content-length with transfer-encoding': [(s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'), 502, 'GW_UPSTREAM_FAILED'],
  'invalid chunk size': [(s) => s.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n'), 502, 'GW_UPSTREAM_FAILED'],
  'header injection with a bare CR': [(s) => s.end('HTTP/1.1 200 OK\r\nX-Evil: a\rSet-Cookie: pwned=1\r\nContent-Length: 2\r\n\r\nok'), 502, 'GW_UPSTREAM_FAILED'],
  'header injection with a bare LF': [(s) => s.end('HTTP/1.1 200 OK\r\nX-Evil: a\nSet-Cookie: pwned=1\r\nContent-Length: 2\r\n\r\nok'), 502, 'GW_UPSTREAM_FAILED'],
  'control character in a header value': [(s) => s.end('HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 2\r\n\r\nok'), 502, 'GW_UPSTREAM_FAILED'],
  'space in a header name': [(s) => s.end('HTTP/1.1 200 OK\r\nX Evil: a\r\nContent-Length: 2\r\n\r\nok'), 502, 'GW_UPSTREAM_FAILED'],
  'headers over 64 KiB': [(s) => s.end(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70000)}\r\nContent-Length: 2\r\n\r\nok`), 502, 'GW_UPSTREAM_FAILED'],
  'status 999': [(s) => s.end('HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok'), 502, 'GW_UPSTREAM_FAILED'],
  'status 000': [(s) => s.end('HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok'), 502, 'GW_UPSTREAM_FAILED'],
  'unrequested 101 upgrade': [(s) => s.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\n'), 502, 'GW_UPSTREAM_FAILED']
}

// The body had started: the client must see an error.
const CUT: Record<string, Behaviour> = {
  'truncated body (content-length 100, 10 sent, close)': (s) => { s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789'); setTimeout(() => s.end(), 30) },
  'resets mid-body': (s) => { s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789'); setTimeout(() => s.resetAndDestroy(), 30) },
  'stalls mid-body (service timeoutMs)': (s) => { s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789') },
  'chunked body without its last chunk': (s) => { s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'); setTimeout(() => s.end(), 30) },
  'invalid chunk after a good one': (s) => { s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'); setTimeout(() => s.end('zz\r\nxx\r\n'), 30) }
}

const slug = (name: string): string => name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase()

async function setup (t: Test, behaviours: Record<string, Behaviour>): Promise<{ g: TestGateway, raw: Record<string, RawUpstream> }> {
  const good = await startUpstream('good')
  const services: Record<string, unknown> = { good: fastService({ primary: good.url }) }
  const routes: unknown[] = [{ type: 'proxy', prefix: '/good', service: 'good' }]
  const raw: Record<string, RawUpstream> = {}
  for (const [name, fn] of Object.entries(behaviours)) {
    const s = slug(name)
    raw[name] = await startRawUpstream(fn)
    services[s] = fastService({ primary: raw[name].url }, { timeoutMs: 300 })
    routes.push({ type: 'proxy', prefix: `/${s}`, service: s })
  }
  const g = await startGateway({ services, routes }, { start: false })
  t.teardown(async () => {
    await g.close()
    await good.close()
    for (const u of Object.values(raw)) await u.close()
  })
  return { g, raw }
}

async function followUp (t: Test, g: TestGateway, name: string): Promise<void> {
  const ok = await request(`${g.url}/good/after`)
  t.equal(ok.statusCode, 200, `${name}: the gateway still serves`)
  await ok.body.dump()
}

t.test('broken before the response starts: a clean 502/504 with the SPEC body', async (t) => {
  const behaviours = Object.fromEntries(Object.entries(CLEAN).map(([k, v]) => [k, v[0]]))
  const { g, raw } = await setup(t, behaviours)
  for (const [name, [, status, code]] of Object.entries(CLEAN)) {
    const r = await rawRequest(g.url, get(`/${slug(name)}/x`), { timeoutMs: 3000 })
    t.equal(r.status, status, `${name}: ${status}`)
    const body = JSON.parse(r.body) as Record<string, unknown>
    t.equal(body.code, code, `${name}: ${code}`)
    t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], `${name}: SPEC §6 shape`)
    t.notMatch(r.raw, /pwned|set-cookie|x-evil|x-big/i, `${name}: nothing of the broken answer reaches the client`)
    t.ok(raw[name]!.received.length >= 1, `${name}: the upstream was asked`)
    await followUp(t, g, name)
  }
})

t.test('broken mid-body: the client sees an error, not a hang', async (t) => {
  const { g } = await setup(t, CUT)
  for (const name of Object.keys(CUT)) {
    const t0 = Date.now()
    const res = await request(`${g.url}/${slug(name)}/x`)
    t.equal(res.statusCode, 200, `${name}: the status had already gone out`)
    const outcome = await Promise.race([
      res.body.text().then(() => 'complete', () => 'error'),
      new Promise((resolve) => setTimeout(resolve, 4000, 'hang'))
    ])
    t.equal(outcome, 'error', `${name}: the client's read fails (after ${Date.now() - t0} ms)`)
    await followUp(t, g, name)
  }
})

t.test('a content-length shorter than the body: the client gets exactly content-length bytes, the connection is dropped', async (t) => {
  const { g, raw } = await setup(t, { 'short content-length': (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloGARBAGE-THAT-IS-NOT-HTTP') })
  for (let i = 0; i < 3; i++) {
    const r = await rawRequest(g.url, get('/short-content-length/x'))
    t.equal(r.status, 200)
    t.equal(r.body, 'hello', 'the bytes past content-length are not passed on')
    t.notMatch(r.raw, /GARBAGE/)
  }
  t.ok(raw['short content-length']!.connections >= 2, 'the poisoned upstream connection was not reused')
  await followUp(t, g, 'short content-length')
})

t.test('an upstream header block of 20 KiB (over undici\'s 16 KiB default, under the 64 KiB limit) passes', async (t) => {
  const big = Array.from({ length: 20 }, (_, i) => `X-Big-${i}: ${String(i % 10).repeat(1024)}\r\n`).join('')
  const upstream = await startRawUpstream((s) => s.end(`HTTP/1.1 200 OK\r\n${big}Content-Length: 2\r\n\r\nok`))
  const g = await startGateway({ services: { big: fastService({ primary: upstream.url }) }, routes: [{ type: 'proxy', prefix: '/big', service: 'big' }] }, { start: false })
  t.teardown(async () => { await g.close(); await upstream.close() })
  const r = await rawRequest(g.url, get('/big/x'), { timeoutMs: 5000 })
  t.equal(r.status, 200, 'the answer passes')
  t.equal(r.body, 'ok')
  t.ok(big.length > 20 * 1024, `the block is ${big.length} bytes`)
  for (let i = 0; i < 20; i++) t.equal(r.headers[`x-big-${i}`]?.length, 1024, `header x-big-${i} arrives whole`)
})
