/**
 * The response cache on a proxy route (SPEC §12): GET 200 answers stored
 * (`x-cache: MISS`, then `HIT` with no upstream call, HEAD answered from
 * the GET's entry), query and vary headers in the key, `no-store`,
 * `private`, `set-cookie` and non-200 answers never stored, `max-age`
 * capping `ttlMs`, a stale copy (`x-cache: STALE`) when every origin failed
 * or answered 5xx, and requests with credentials or a body bypassing.
 * Time is the cache's injected clock.
 */
import t from 'tap'
import { request } from 'undici'
import { startUpstream, json, type Handler, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

async function setup (t: { teardown(fn: () => unknown): void }, handler: Handler, cache: Record<string, unknown>): Promise<{ g: TestGateway, up: TestUpstream, clock: { now: number } }> {
  const up = await startUpstream('product', handler)
  t.teardown(() => up.close())
  const clock = { now: 5_000_000 }
  const g = await startGateway({
    services: { product: fastService({ primary: up.url }, { retry: { onStatus: [] } }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products', cache }]
  }, { cacheClock: () => clock.now })
  t.teardown(() => g.close())
  return { g, up, clock }
}

async function get (url: string, opts: { method?: 'GET' | 'HEAD' | 'POST', headers?: Record<string, string>, body?: string } = {}): Promise<{ status: number, headers: Record<string, unknown>, text: string }> {
  const res = await request(url, { method: opts.method ?? 'GET', headers: opts.headers, body: opts.body })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

async function counts (g: TestGateway): Promise<Record<string, number>> {
  const text = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const out: Record<string, number> = {}
  for (const m of text.matchAll(/^gateway_cache_total\{route="\/api\/products",section="",result="(\w+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2])
  return out
}

let n = 0
const counting: Handler = (req, res) => json(res, 200, { url: req.url, n: ++n }, { etag: `"${n}"` })

t.test('MISS stores, HIT answers without an upstream call (same bytes and headers), HEAD is served from it', async (t) => {
  const { g, up, clock } = await setup(t, counting, { ttlMs: 1000 })
  const a = await get(`${g.url}/api/products/1?x=1`)
  t.equal(a.headers['x-cache'], 'MISS')
  const b = await get(`${g.url}/api/products/1?x=1`, { headers: { 'x-request-id': 'req-b' } })
  t.equal(b.headers['x-cache'], 'HIT')
  t.equal(b.text, a.text)
  t.equal(b.headers.etag, a.headers.etag, 'upstream headers kept')
  t.equal(b.headers['x-request-id'], 'req-b', 'the request id is this request\'s')
  t.equal(b.headers['content-length'], String(Buffer.byteLength(a.text)))
  t.equal(up.requests.length, 1)
  const head = await get(`${g.url}/api/products/1?x=1`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.headers['x-cache'], 'HIT')
  t.equal(head.text, '')
  t.equal(up.requests.length, 1)
  await get(`${g.url}/api/products/1?x=2`)
  t.equal(up.requests.length, 2, 'the query is part of the key')
  clock.now += 1000
  const c = await get(`${g.url}/api/products/1?x=1`)
  t.equal(c.headers['x-cache'], 'MISS')
  t.equal(up.requests.length, 3, 'expired')
  t.same(await counts(g), { hit: 2, miss: 3, stale: 0, bypass: 0 })
})

t.test('never stored: no-store, private, set-cookie, non-200', async (t) => {
  for (const [label, handler] of [
    ['no-store', (req, res) => json(res, 200, { url: req.url }, { 'cache-control': 'no-store' })],
    ['private', (req, res) => json(res, 200, { url: req.url }, { 'cache-control': 'private' })],
    ['set-cookie', (req, res) => json(res, 200, { url: req.url }, { 'set-cookie': 'sid=1' })],
    ['404', (req, res) => json(res, 404, { url: req.url })]
  ] as Array<[string, Handler]>) {
    const { g, up } = await setup(t, handler, { ttlMs: 60000, staleIfErrorMs: 60000 })
    await get(`${g.url}/api/products/1`)
    const r = await get(`${g.url}/api/products/1`)
    t.equal(r.headers['x-cache'], 'MISS', label)
    t.equal(up.requests.length, 2, `${label}: both reached the upstream`)
  }
})

t.test('max-age caps ttlMs', async (t) => {
  const { g, up, clock } = await setup(t, (req, res) => json(res, 200, { url: req.url }, { 'cache-control': 'public, max-age=2' }), { ttlMs: 60000 })
  await get(`${g.url}/api/products/1`)
  clock.now += 1999
  t.equal((await get(`${g.url}/api/products/1`)).headers['x-cache'], 'HIT')
  clock.now += 1
  t.equal((await get(`${g.url}/api/products/1`)).headers['x-cache'], 'MISS')
  t.equal(up.requests.length, 2)
})

t.test('vary splits entries; authorization or a request body bypasses', async (t) => {
  const { g, up } = await setup(t, counting, { ttlMs: 60000, vary: ['accept-language'] })
  await get(`${g.url}/api/products/1`, { headers: { 'accept-language': 'de' } })
  await get(`${g.url}/api/products/1`, { headers: { 'accept-language': 'fr' } })
  t.equal((await get(`${g.url}/api/products/1`, { headers: { 'accept-language': 'de' } })).headers['x-cache'], 'HIT')
  t.equal(up.requests.length, 2)
  const auth = await get(`${g.url}/api/products/1`, { headers: { 'accept-language': 'de', authorization: 'Bearer x' } })
  t.equal(auth.headers['x-cache'], 'MISS')
  const post = await get(`${g.url}/api/products/1`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })
  t.equal(post.headers['x-cache'], 'MISS')
  t.equal(up.requests.length, 4)
  t.same(await counts(g), { hit: 1, miss: 2, stale: 0, bypass: 2 })
})

t.test('stale-if-error: a 5xx or a dead origin gets the stored copy with x-cache: STALE, until ttlMs + staleIfErrorMs', async (t) => {
  let down = false
  const { g, up, clock } = await setup(t, (req, res) => down ? json(res, 502, { down: true }) : json(res, 200, { url: req.url, ok: true }), { ttlMs: 1000, staleIfErrorMs: 10000 })
  const a = await get(`${g.url}/api/products/1`)
  down = true
  clock.now += 1000
  let r = await get(`${g.url}/api/products/1`)
  t.equal(r.status, 200)
  t.equal(r.headers['x-cache'], 'STALE')
  t.equal(r.text, a.text)
  t.equal(r.headers.age, '1')
  await up.kill()
  clock.now += 9999
  r = await get(`${g.url}/api/products/1`)
  t.equal(r.headers['x-cache'], 'STALE', 'connection refused: stale')
  t.equal(r.text, a.text)
  clock.now += 1
  r = await get(`${g.url}/api/products/1`)
  t.equal(r.status, 502)
  t.match(JSON.parse(r.text), { code: 'GW_UPSTREAM_FAILED' })
  t.equal((await counts(g)).stale, 2)
})

t.test('an answer over maxEntryBytes is relayed whole and not stored', async (t) => {
  const big = 'y'.repeat(5000)
  const { g, up } = await setup(t, (_req, res) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.write(big.slice(0, 2500)); res.end(big.slice(2500)) }, { ttlMs: 60000, maxEntryBytes: 4096 })
  t.equal((await get(`${g.url}/api/products/1`)).text, big)
  const r = await get(`${g.url}/api/products/1`)
  t.equal(r.text, big)
  t.equal(r.headers['x-cache'], 'MISS')
  t.equal(up.requests.length, 2)
})
