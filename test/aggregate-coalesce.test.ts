/**
 * Coalescing of identical concurrent section calls (SPEC §12): 30 client
 * requests that arrive while one slow section call is open share it (the
 * upstream counts its calls); a leader that fails gives every follower its
 * own outcome at once (no hang); `coalesce: false` sends each call; calls
 * whose forwarded headers differ are never shared. The upstream holds its
 * answer until the gateway's server has seen every client request (its
 * 'request' events), so no verdict depends on timing.
 */
import t from 'tap'
import { request } from 'undici'
import type { ServerResponse } from 'node:http'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'

const N = 30

interface Setup {
  g: TestGateway
  inventory: TestUpstream
  /** Answers held by the inventory upstream. */
  held: ServerResponse[]
  /** Answers the held calls with `answer`, and every later call at once. */
  release(answer: (res: ServerResponse) => void): void
}

async function setup (t: { teardown(fn: () => unknown): void }, section: Record<string, unknown> = {}): Promise<Setup> {
  const product = await startUpstream('product', (req, res) => json(res, 200, { id: req.url }))
  const held: ServerResponse[] = []
  let auto: ((res: ServerResponse) => void) | null = null
  const inventory = await startUpstream('inventory', (_req, res) => { if (auto !== null) auto(res); else held.push(res) })
  t.teardown(() => Promise.all([product.close(), inventory.close()]))
  const g = await startGateway({
    server: { maxInFlight: 0 },
    services: {
      product: fastService({ primary: product.url }),
      inventory: fastService({ primary: inventory.url }, { timeoutMs: 20000 })
    },
    routes: [{
      type: 'aggregate',
      path: '/products/:id/details',
      timeoutMs: 20000,
      sections: {
        product: { service: 'product', path: '/products/{id}' },
        inventory: { service: 'inventory', path: '/inventory/{id}', ...section }
      }
    }]
  })
  t.teardown(() => g.close())
  const release = (answer: (res: ServerResponse) => void): void => {
    auto = answer
    for (const res of held.splice(0)) answer(res)
  }
  return { g, inventory, held, release }
}

/** Resolves once the gateway's HTTP server has received `count` more requests. */
function serverRequests (g: TestGateway, count: number): Promise<void> {
  return new Promise((resolve) => {
    let seen = 0
    const on = (): void => {
      if (++seen < count) return
      g.gw.app.server.off('request', on)
      // The handlers of those requests run on the next turns; they join the
      // open call long before the upstream's answer can travel back.
      setImmediate(resolve)
    }
    g.gw.app.server.on('request', on)
  })
}

async function get1 (g: TestGateway): Promise<Record<string, unknown>> {
  return await (await request(`${g.url}/products/1/details`)).body.json() as Record<string, unknown>
}

/** Resolves once `what()` holds (polled, bounded). */
async function until (what: () => boolean, label: string): Promise<void> {
  for (let i = 0; i < 2000 && !what(); i++) await new Promise((resolve) => setTimeout(resolve, 5))
  if (!what()) throw new Error(`timed out waiting for ${label}`)
}

async function fire (g: TestGateway, headers: (i: number) => Record<string, string> = () => ({})): Promise<Array<{ status: number, headers: Record<string, unknown>, body: Record<string, unknown> }>> {
  return Promise.all(Array.from({ length: N }, async (_v, i) => {
    const res = await request(`${g.url}/products/1/details`, { headers: headers(i), headersTimeout: 30000, bodyTimeout: 30000 })
    return { status: res.statusCode, headers: res.headers, body: await res.body.json() as Record<string, unknown> }
  }))
}

t.test(`${N} concurrent identical calls to a slow upstream: one upstream call, every answer shares its bytes`, async (t) => {
  const { g, inventory, held, release } = await setup(t)
  const arrived = serverRequests(g, N)
  const answers = fire(g)
  await arrived
  await until(() => held.length >= 1, 'the first inventory call')
  release((res) => json(res, 200, { stock: 3, answer: 'shared' }))
  const all = await answers
  t.ok(inventory.requests.length <= 2, `upstream calls: ${inventory.requests.length} (≤ 2)`)
  t.ok(all.every((r) => r.status === 200 && r.headers['x-aggregate-complete'] === 'true'), 'every answer complete')
  t.ok(all.every((r) => JSON.stringify(r.body.inventory) === '{"stock":3,"answer":"shared"}'), 'every answer has the shared section')
})

t.test('a leader that fails gives every follower its outcome at once, never a hang', async (t) => {
  const { g, inventory, held, release } = await setup(t)
  const arrived = serverRequests(g, N)
  const answers = fire(g)
  await arrived
  await until(() => held.length >= 1, 'the first inventory call')
  release((res) => res.socket?.destroy())
  const all = await answers
  t.ok(inventory.requests.length <= 2, `upstream calls: ${inventory.requests.length}`)
  t.ok(all.every((r) => r.status === 200 && r.body.inventory === null && r.headers['x-aggregate-failed'] === 'inventory'), 'every follower got the failure')
  // The next request is a fresh call, not a stuck one.
  release((res) => json(res, 200, { stock: 1 }))
  const before = inventory.requests.length
  const next = await get1(g)
  t.same(next.inventory, { stock: 1 })
  t.equal(inventory.requests.length, before + 1)
})

t.test('coalesce: false sends every call', async (t) => {
  const { g, inventory, held, release } = await setup(t, { coalesce: false })
  const answers = fire(g)
  // All N calls reach the upstream while none is answered: they were not shared.
  await until(() => held.length >= N, `${N} inventory calls`)
  release((res) => json(res, 200, { stock: 3 }))
  const all = await answers
  t.equal(inventory.requests.length, N)
  t.ok(all.every((r) => r.status === 200))
})

t.test('calls whose forwarded headers differ are not shared', async (t) => {
  const { g, inventory, held, release } = await setup(t)
  const arrived = serverRequests(g, N)
  const answers = fire(g, (i) => ({ authorization: `Bearer user-${i % 2}` }))
  await arrived
  await until(() => held.length >= 2, 'one call per user')
  release((res) => json(res, 200, { forUser: true }))
  await answers
  const users = new Set(inventory.requests.map((r) => r.headers.authorization))
  t.same([...users].sort(), ['Bearer user-0', 'Bearer user-1'], 'each user got a call carrying their own credentials')
  t.ok(inventory.requests.length <= 4, `upstream calls: ${inventory.requests.length}`)
})
