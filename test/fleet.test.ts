/**
 * The fleet control plane against a real PostgreSQL (SPEC §10), with
 * gateways in this process: a change on one replica reaches the other
 * before the answer (`fleet.applied`), versions and If-Match on the stored
 * version, the shared history, `GET /admin/fleet`, joining with stored
 * weights, a lost notification covered by the periodic re-read, the
 * schema made once by `migrate` and used by a user with DML rights only,
 * and the metrics. Outages and real processes: test/fleet-cli.test.ts.
 */
import t from 'tap'
import { request } from 'undici'
import { GatewayError } from '../src/errors.js'
import { migrateStore } from '../src/fleet/fleet.js'
import { validateConfig } from '../src/config/load.js'
import { startGateway, type TestGateway } from './helpers/gateway.js'
import { startPostgres, type TestPostgres } from './helpers/postgres.js'
import { until } from './helpers/cli.js'
import { TOKEN, adminGet, client, colourOf, colourUpstream, cutoverConfig, cutoverService, pool, sample, scrape } from './helpers/colours.js'
import type { TestUpstream } from './helpers/upstream.js'

t.teardown(() => client.close())
// A real PostgreSQL and several gateways on a machine shared with other test files: room to finish.
t.setTimeout(180000)

let pg: TestPostgres
let blue: TestUpstream
let green: TestUpstream
let dbs = 0

t.before(async () => {
  pg = await startPostgres(t)
  blue = await colourUpstream('blue')
  green = await colourUpstream('green')
})
t.teardown(async () => { await blue?.close(); await green?.close() })

const fleetOf = (url: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ url, name: 'test', heartbeatMs: 250, applyTimeoutMs: 5000, ...extra })

async function replica (t: { teardown(fn: () => unknown): void }, fleet: Record<string, unknown>, traffic: Record<string, number> = { blue: 100, green: 0 }): Promise<TestGateway> {
  const g = await startGateway({ ...cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic })), fleet })
  t.teardown(() => g.close())
  return g
}

const loaded = (g: TestGateway): Promise<true> => until('the fleet state to load', () => g.gw.control.fleet?.connected === true ? true : undefined, 30000)

async function put (adminUrl: string, body: unknown, ifMatch?: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const headers: Record<string, string> = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }
  if (ifMatch !== undefined) headers['if-match'] = ifMatch
  const res = await request(`${adminUrl}/admin/services/review/traffic`, { method: 'PUT', headers, body: JSON.stringify(body), dispatcher: client })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

const newDb = async (): Promise<string> => pg.database(`fleet_${++dbs}`)

t.test('a PUT on one replica is applied on the other before the answer; versions, If-Match and history are the fleet\'s', async (t) => {
  const url = await newDb()
  const a = await replica(t, fleetOf(url))
  const b = await replica(t, fleetOf(url))
  await Promise.all([loaded(a), loaded(b)])
  // Both heartbeats are in before the change: both are live replicas.
  await until('two live replicas', async () => (await a.gw.control.fleet!.liveReplicas()).length === 2 ? true : undefined)

  const r = await put(a.adminUrl, { green: 100 })
  t.equal(r.status, 200)
  t.same(r.body.traffic, { blue: 0, green: 100 })
  t.equal(r.body.version, 2)
  const fleet = r.body.fleet as { version: number, applied: string[], pending: string[] }
  t.equal(fleet.version, 2)
  t.same(fleet.applied.sort(), [a.gw.control.replicaId, b.gw.control.replicaId].sort(), 'both replicas applied it')
  t.same(fleet.pending, [], 'none pending')
  const onB = await pool(30, 6, () => colourOf(b.url))
  t.ok(onB.every((x) => x.colour === 'green'), 'the next requests on the other replica go to green')
  t.equal(((await adminGet(b.adminUrl, '/admin/services')).body.review as { version: number }).version, 2, 'the other replica shows version 2')

  const stale = await put(b.adminUrl, { blue: 100 }, '1')
  t.equal(stale.status, 412, 'If-Match 1 on the other replica: the stored version is 2')
  t.equal(stale.body.code, 'GW_VERSION_CONFLICT')
  t.same(a.gw.registry.get('review')!.traffic, { blue: 0, green: 100 }, 'nothing changed on A')
  t.same(b.gw.registry.get('review')!.traffic, { blue: 0, green: 100 }, 'nothing changed on B')
  const back = await put(b.adminUrl, { blue: 100 }, '"2"')
  t.equal(back.status, 200)
  t.equal(back.body.version, 3)
  const same = await put(a.adminUrl, { blue: 100 })
  t.equal(same.body.version, 3, 'the same weights again: no new version')

  const h = await adminGet(a.adminUrl, '/admin/services/review/history')
  const list = h.body as unknown as Array<Record<string, unknown>>
  t.same(list.map((e) => [e.version, e.replica, e.source]), [[3, b.gw.control.replicaId, 'admin'], [2, a.gw.control.replicaId, 'admin']], 'one history, newest first, naming the replica that made each change')
  t.same(list[1]!.from, { blue: 100, green: 0 })
  t.same(list[1]!.to, { blue: 0, green: 100 })

  await b.gw.control.changeTraffic({ service: 'review', weights: { blue: 50, green: 50 }, source: 'rollout', by: 'rollout r1', reason: 'step 1' })
  const top = (await a.gw.control.history('review'))[0]!
  t.same([top.version, top.source, top.reason], [4, 'rollout', 'step 1'])
  t.same(a.gw.registry.get('review')!.traffic, { blue: 50, green: 50 }, 'a rollout change reaches every replica too')

  a.gw.control.setGuard((c) => { if (c.source === 'admin') throw new GatewayError('GW_CONFLICT', 'a rollout runs') })
  t.equal((await put(a.adminUrl, { green: 100 })).status, 409, 'the guard refuses before anything is committed')
  t.equal(b.gw.control.version('review'), 4, 'nothing committed')
  a.gw.control.setGuard(null)

  const text = await scrape(b.adminUrl)
  t.equal(sample(text, 'gateway_fleet_version', { service: 'review' }), 4, 'gateway_fleet_version')
  t.equal(text.match(/^gateway_fleet_connected (\d+)$/m)?.[1], '1', 'gateway_fleet_connected')
  await until('gateway_fleet_replicas 2', async () => /^gateway_fleet_replicas 2$/m.test(await scrape(b.adminUrl)) ? true : undefined)
  t.ok(a.logs.some((l) => l.event === 'fleet' && l.state === 'connected'), 'the connection is logged')
  t.notOk(JSON.stringify(a.logs).includes('fleet-test-pw'), 'the store password is never logged')
})

t.test('GET /admin/fleet lists the replicas; one that stops leaves the live set; stats are published with heartbeats', async (t) => {
  const url = await newDb()
  const a = await replica(t, fleetOf(url))
  const b = await replica(t, fleetOf(url))
  await Promise.all([loaded(a), loaded(b)])
  b.gw.control.fleet!.setHeartbeatStats(() => ({ requests: 7 }))
  const view = await until('both replicas in GET /admin/fleet with stats', async () => {
    const v = (await adminGet(a.adminUrl, '/admin/fleet')).body as { replicas: Array<Record<string, unknown>> }
    return v.replicas.length === 2 && v.replicas.every((r) => r.live === true) && v.replicas.some((r) => r.stats !== undefined) ? v : undefined
  })
  const body = view as unknown as Record<string, unknown>
  t.equal(body.name, 'test')
  t.equal(body.connected, true)
  t.equal(body.self, a.gw.control.replicaId)
  const rb = view.replicas.find((r) => r.id === b.gw.control.replicaId)!
  t.equal(rb.pid, process.pid)
  t.match(rb.id, new RegExp(`^[^:]+:${process.pid}:[0-9a-f]{6}$`), 'id is host:pid:random')
  t.same(rb.versions, { review: 1 })
  t.same(rb.stats, { requests: 7 }, 'setHeartbeatStats shows in the replica entry')
  t.ok(Date.parse(String(rb.lastSeenAt)) >= Date.parse(String(rb.startedAt)))

  await b.close()
  const after = (await adminGet(a.adminUrl, '/admin/fleet')).body as { replicas: Array<{ id: string }> }
  t.same(after.replicas.map((r) => r.id), [a.gw.control.replicaId], 'a replica that stops leaves at once')
  const r = await put(a.adminUrl, { green: 100 })
  t.same((r.body.fleet as { pending: string[] }).pending, [], 'and is not waited for')

  const noFleet = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url } })))
  t.teardown(() => noFleet.close())
  const nf = await adminGet(noFleet.adminUrl, '/admin/fleet')
  t.equal(nf.status, 404, 'without fleet, GET /admin/fleet is a 404')
})

t.test('joining: the stored weights win over the config\'s; a lost notification is covered by the periodic re-read', async (t) => {
  const url = await newDb()
  const a = await replica(t, fleetOf(url))
  await loaded(a)
  t.equal((await put(a.adminUrl, { blue: 20, green: 80 })).body.version, 2)
  // C starts with config weights 100/0 and joins at version 2.
  const c = await replica(t, fleetOf(url))
  await loaded(c)
  t.same(c.gw.registry.get('review')!.traffic, { blue: 20, green: 80 }, 'the joining replica serves the stored weights')
  t.equal(c.gw.control.version('review'), 2)
  const ready = await request(`${c.adminUrl}/readyz`, { dispatcher: client })
  t.equal(ready.statusCode, 200, 'ready once loaded')
  await ready.body.dump()

  // A change written without its notification (as if lost): the re-read every 10 heartbeats finds it.
  await pg.query(`UPDATE lattice_gateway_versions SET version = 3, weights = '{"blue":0,"green":100}' WHERE fleet = 'test' AND service = 'review'`, [], url.split('/').pop())
  await until('both replicas to re-read version 3', () => a.gw.control.version('review') === 3 && c.gw.control.version('review') === 3 ? true : undefined, 20000)
  t.same(c.gw.registry.get('review')!.traffic, { blue: 0, green: 100 })
})

t.test('a store that cannot be reached at start is not fatal: /readyz names fleet, requests use the config weights', async (t) => {
  const g = await replica(t, fleetOf('postgres://nobody:secret-pw@127.0.0.1:1/none'))
  const ready = await request(`${g.adminUrl}/readyz`, { dispatcher: client })
  t.equal(ready.statusCode, 503)
  t.match(await ready.body.json(), { failing: ['fleet'] }, '/readyz names fleet')
  t.same((await colourOf(g.url)).colour, 'blue', 'requests are served with the config weights')
  const r = await put(g.adminUrl, { green: 100 })
  t.equal(r.status, 503)
  t.equal(r.body.code, 'GW_FLEET_UNAVAILABLE')
  t.same(g.gw.registry.get('review')!.traffic, { blue: 100, green: 0 }, 'nothing changed')
  const all = await adminGet(g.adminUrl, '/admin/services')
  t.equal(all.status, 200, 'GET /admin/services still answers')
  await g.waitForLog((l) => l.event === 'fleet' && l.state === 'unreachable')
  t.notOk(JSON.stringify(g.logs).includes('secret-pw'), 'the password is not in the log')
  t.ok(g.logs.some((l) => typeof l.url === 'string' && l.url.includes('***')), 'the URL is logged with the password replaced')
})

t.test('migrate creates the tables once; then a user with DML rights only runs the fleet', async (t) => {
  const url = await newDb()
  const db = url.split('/').pop()!
  const lines: string[] = []
  t.equal(await migrateStore({ url, name: 'x', applyTimeoutMs: 3000, heartbeatMs: 100 }, (l) => lines.push(l), (l) => lines.push(l)), 0)
  t.match(lines[0], /tables created/)
  t.notMatch(lines[0], /fleet-test-pw/, 'the password is not printed')
  t.equal(await migrateStore({ url, name: 'x', applyTimeoutMs: 3000, heartbeatMs: 100 }, (l) => lines.push(l), (l) => lines.push(l)), 0)
  t.match(lines[1], /already present/)

  await pg.query(`CREATE ROLE gw_runtime LOGIN PASSWORD 'rt-pw'`).catch(() => {})
  await pg.query(`REVOKE CREATE ON SCHEMA public FROM PUBLIC`, [], db)
  await pg.query(`GRANT USAGE ON SCHEMA public TO gw_runtime`, [], db)
  await pg.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gw_runtime`, [], db)
  await pg.query(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gw_runtime`, [], db)
  const dml = `postgres://gw_runtime:rt-pw@127.0.0.1:${pg.port}/${db}`
  const g = await replica(t, fleetOf(dml))
  await loaded(g)
  const r = await put(g.adminUrl, { green: 100 })
  t.equal(r.status, 200, 'a change commits with DML rights only')
  t.equal(r.body.version, 2)
  const fb = await request(`${g.adminUrl}/admin/services/review/deployments/blue/failback`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, dispatcher: client })
  t.equal(fb.statusCode, 200, 'a failback commits too')
  t.match(await fb.body.json(), { failedBack: false, fleet: { pending: [] } })
  t.notOk(g.logs.some((l) => l.event === 'fleet_schema'), 'no DDL was attempted')
})

t.test('two replicas starting at once on an empty database create the schema once and both load', async (t) => {
  const url = await newDb()
  const [a, b] = await Promise.all([replica(t, fleetOf(url)), replica(t, fleetOf(url))])
  await Promise.all([loaded(a), loaded(b)])
  const r = await put(b.adminUrl, { green: 100 })
  t.equal(r.status, 200)
  t.same((r.body.fleet as { applied: string[] }).applied.length, 2)
})

t.test('config: fleet keys, defaults and checks; a wrong URL is reported without its value', async (t) => {
  const base = { services: { a: { origins: { primary: 'http://127.0.0.1:1' } } } }
  t.same(validateConfig({ ...base, fleet: { url: 'postgres://u:p@h/db' } }).fleet, { url: 'postgres://u:p@h/db', name: 'default', applyTimeoutMs: 3000, heartbeatMs: 1000 })
  t.equal(validateConfig(base).fleet, undefined, 'no fleet: no key')
  t.throws(() => validateConfig({ ...base, fleet: {} }), /fleet\.url: is required/)
  t.throws(() => validateConfig({ ...base, fleet: { url: 'postgres://x', heartbeatMs: 5 } }), /fleet\.heartbeatMs: must be >= 10/)
  t.throws(() => validateConfig({ ...base, fleet: { url: 'postgres://x', name: 'a b' } }), /fleet\.name/)
  let message = ''
  try { validateConfig({ ...base, fleet: { url: 'mysql://admin:hunter2@db/x' } }) } catch (err) { message = (err as Error).message }
  t.match(message, /fleet\.url: must be a postgres:\/\/ or postgresql:\/\/ URL/)
  t.notMatch(message, /hunter2/, 'the password is not echoed')
})
