/**
 * A fleet replica with `server.workers: 2` (SPEC §10): the process and its
 * workers are one replica with one store connection. A change made on a
 * one-process replica reaches both workers before the answer; a change
 * made through the cluster's admin worker reaches the other replica; the
 * replica registry lists the cluster once.
 */
import t from 'tap'
import { request, Agent } from 'undici'
import { startReplica as startGateway, writeConfig, type Replica } from './helpers/cli.js'
import { until } from './helpers/until.js'
import { startPostgres, type TestPostgres } from './helpers/postgres.js'
import { colourUpstream } from './helpers/colours.js'
import type { TestUpstream } from './helpers/upstream.js'

// Real processes (three gateways, a cluster among them) on a shared machine.
t.setTimeout(240000)

const TOKEN = 'fleet-cluster-token'
// A fresh connection per request: the cluster spreads connections over its workers.
const agent = new Agent({ pipelining: 0, connections: 64 })
t.teardown(() => agent.close())

let pg: TestPostgres
let blue: TestUpstream
let green: TestUpstream
t.before(async () => {
  pg = await startPostgres(t)
  blue = await colourUpstream('blue')
  green = await colourUpstream('green')
})
t.teardown(async () => { await blue?.close(); await green?.close() })

const configText = (url: string, workers: number): string => `
server: { host: 127.0.0.1, port: 0, logLevel: info, workers: ${workers} }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
fleet: { url: "${url}", name: cluster, heartbeatMs: 500, applyTimeoutMs: 8000 }
services:
  review:
    timeoutMs: 2000
    healthCheck: { intervalMs: 100, timeoutMs: 1000, unhealthyThreshold: 3, healthyThreshold: 1 }
    deployments:
      blue: { primary: ${blue.url} }
      green: { primary: ${green.url} }
    traffic: { blue: 100, green: 0 }
routes:
  - { type: proxy, prefix: /reviews, service: review }
`

const startReplica = (t: { teardown(fn: () => unknown): void }, file: string, workers: number): Promise<Replica> => startGateway(t, file, { workers })

async function json (url: string, opts: { method?: 'GET' | 'PUT', body?: unknown } = {}): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await request(url, { method: opts.method ?? 'GET', dispatcher: agent, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, ...(opts.body === undefined ? {} : { body: JSON.stringify(opts.body) }) })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

/** `n` requests on fresh connections; the colours and the pids of the workers that served them (from the access log). */
async function colours (r: Replica, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    const res = await request(`${r.url}/reviews/${i}`, { dispatcher: agent, reset: true })
    out.push(res.statusCode === 200 ? ((await res.body.json()) as { colour: string }).colour : `status ${res.statusCode}`)
  }
  return out
}

const ready = async (r: Replica): Promise<boolean> => {
  const res = await request(`${r.admin}/readyz`, { dispatcher: agent })
  await res.body.dump()
  return res.statusCode === 200
}

t.test('a two-worker replica and a one-process replica share one state', async (t) => {
  const url = await pg.database('cluster_fleet')
  const cluster = await startReplica(t, writeConfig(t, configText(url, 2)), 2)
  const single = await startReplica(t, writeConfig(t, configText(url, 1)), 1)
  await until(async () => (await ready(cluster)) && (await ready(single)) ? true : undefined, { what: 'both replicas ready', timeoutMs: 30000 })
  const view = await until(async () => {
    const v = await json(`${single.admin}/admin/fleet`)
    const live = (v.body.replicas as Array<{ id: string, pid: number, live: boolean }>).filter((r) => r.live)
    return live.length === 2 ? live : undefined
  }, { what: 'two live replicas', timeoutMs: 20000 })
  t.ok(view.some((r) => r.pid === cluster.g.child.pid), 'the cluster is one replica, under its primary\'s pid')

  const put = await json(`${single.admin}/admin/services/review/traffic`, { method: 'PUT', body: { green: 100 } })
  t.equal(put.status, 200)
  t.same((put.body.fleet as { pending: string[] }).pending, [], 'the cluster replica confirmed it')
  const seen = await colours(cluster, 30)
  t.same(seen, Array(30).fill('green'), 'every request on the cluster goes to green right after the answer')
  // Workers write their access lines in buffered batches: wait for them.
  const servedBy = (): Set<unknown> => new Set(cluster.g.lines.filter((l) => l.msg === 'request' && String(l.url).startsWith('/reviews/')).map((l) => l.pid))
  t.equal((await until(() => servedBy().size === 2 ? servedBy() : undefined, { what: 'access lines of both workers', timeoutMs: 30000 })).size, 2, 'served by both workers (connections are dealt round-robin)')

  const back = await json(`${cluster.admin}/admin/services/review/traffic`, { method: 'PUT', body: { blue: 100 } })
  t.equal(back.status, 200, 'a change through the cluster\'s admin worker')
  t.equal(back.body.version, 3)
  t.same((back.body.fleet as { pending: string[] }).pending, [])
  t.same(await colours(single, 10), Array(10).fill('blue'), 'reaches the other replica')
  t.same(await colours(cluster, 20), Array(20).fill('blue'), 'and every worker of the cluster')
  const stale = await json(`${cluster.admin}/admin/services/review/traffic`, { method: 'PUT', body: { green: 100 } })
  t.equal(stale.status, 200)
  const conflict = await request(`${cluster.admin}/admin/services/review/traffic`, { method: 'PUT', dispatcher: agent, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'if-match': '3' }, body: '{"blue":100}' })
  t.equal(conflict.statusCode, 412, 'If-Match through the cluster')
  t.match(await conflict.body.json(), { code: 'GW_VERSION_CONFLICT' })
  const history = await json(`${cluster.admin}/admin/services/review/history`)
  t.same((history.body as unknown as Array<{ version: number }>).map((e) => e.version), [4, 3, 2], 'the fleet history through the cluster')
  const metrics = await request(`${cluster.admin}/metrics`, { dispatcher: agent })
  const text = await metrics.body.text()
  t.match(text, /^gateway_fleet_version\{service="review"\} 4$/m, 'gateway_fleet_version from the workers')
  t.match(text, /^gateway_fleet_connected 1$/m)

  cluster.g.child.kill('SIGTERM')
  t.equal((await cluster.g.exited)[0], 0, 'the cluster stops with 0')
  const after = await json(`${single.admin}/admin/fleet`)
  t.equal((after.body.replicas as unknown[]).length, 1, 'and leaves the registry')
  single.g.child.kill('SIGTERM')
  await single.g.exited
})
