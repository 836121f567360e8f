/**
 * The fleet from outside (SPEC §10): real gateway processes (the CLI)
 * sharing a real PostgreSQL. Two replicas start at once on an empty
 * database; a PUT on one is seen by the next request on the other; a
 * replica started later serves the stored weights; a replica that is
 * SIGKILLed leaves the live set; the PostgreSQL server SIGKILLed under
 * load fails no request, admin changes answer 503 meanwhile, and after its
 * restart every replica reconnects and re-reads the state; `migrate`.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { request, Agent } from 'undici'
import { startReplica as startGateway, writeConfig, childEnv, root, type Replica } from './helpers/cli.js'
import { until } from './helpers/until.js'
import { startPostgres, type TestPostgres } from './helpers/postgres.js'
import { colourUpstream } from './helpers/colours.js'
import type { TestUpstream } from './helpers/upstream.js'

// Real processes and a real server on a machine shared with other test files: room to finish.
t.setTimeout(240000)

const TOKEN = 'fleet-cli-token'
const agent = new Agent({ connections: 16 })
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

// 500 ms heartbeats: live for 1.5 s, room for a busy machine.
const configText = (url: string, extra = ''): string => `
server: { host: 127.0.0.1, port: 0, logLevel: info }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
fleet: { url: "${url}", name: cli, heartbeatMs: 500, applyTimeoutMs: 8000 }
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
${extra}`

const startReplica = (t: { teardown(fn: () => unknown): void }, file: string): Promise<Replica> => startGateway(t, file, { timeoutMs: 30000 })

async function json (url: string, opts: { method?: 'GET' | 'PUT', body?: unknown } = {}): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await request(url, { method: opts.method ?? 'GET', dispatcher: agent, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, ...(opts.body === undefined ? {} : { body: JSON.stringify(opts.body) }) })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

const colour = async (r: Replica): Promise<string> => {
  const res = await request(`${r.url}/reviews/1`, { dispatcher: agent })
  if (res.statusCode !== 200) { await res.body.dump(); return `status ${res.statusCode}` }
  return ((await res.body.json()) as { colour: string }).colour
}

const ready = async (r: Replica): Promise<boolean> => {
  const res = await request(`${r.admin}/readyz`, { dispatcher: agent })
  await res.body.dump()
  return res.statusCode === 200
}

const liveIds = async (r: Replica): Promise<string[]> => {
  const v = await json(`${r.admin}/admin/fleet`)
  return (v.body.replicas as Array<{ id: string, live: boolean }>).filter((x) => x.live).map((x) => x.id)
}

t.test('replicas: start at once on an empty database, a PUT reaches the next request everywhere, a late joiner serves the stored weights, a killed one leaves', async (t) => {
  const url = await pg.database('cli_fleet')
  const file = writeConfig(t, configText(url))
  const [a, b] = await Promise.all([startReplica(t, file), startReplica(t, file)])
  await until(async () => (await ready(a)) && (await ready(b)) ? true : undefined, { what: 'both replicas ready (fleet loaded)', timeoutMs: 30000 })
  await until(async () => (await liveIds(a)).length === 2 ? true : undefined, { what: 'two live replicas', timeoutMs: 60000 })
  await until(() => [a, b].some((r) => r.g.lines.some((l) => l.event === 'fleet_schema')), { what: 'a fleet_schema line', timeoutMs: 30000 })
  const created = [a, b].filter((r) => r.g.lines.some((l) => l.event === 'fleet_schema')).length
  t.ok(created >= 1, `the schema was created (by ${created} replica(s), under the advisory lock)`)

  const put = await json(`${a.admin}/admin/services/review/traffic`, { method: 'PUT', body: { green: 100 } })
  t.equal(put.status, 200)
  t.equal(put.body.version, 2)
  t.same((put.body.fleet as { pending: string[] }).pending, [], 'every live replica applied it before the answer')
  t.equal((put.body.fleet as { applied: string[] }).applied.length, 2)
  const next = await colour(b)
  t.equal(next, 'green', 'the next request on the other replica goes to green')
  for (let i = 0; i < 20; i++) if (await colour(b) !== 'green') { t.fail('a request on B went elsewhere'); break }
  // Log lines are written in buffered batches (at most 250 ms apart): wait for the line, not for the request.
  t.ok(await until(() => b.g.lines.some((l) => l.event === 'traffic' && l.version === 2), { what: 'B to log the change', timeoutMs: 30000 }), 'B logged the change with its version')

  // A replica started later joins the cutover: its config says blue 100, the store says green 100.
  const c = await startReplica(t, file)
  await until(async () => (await ready(c)) ? true : undefined, { what: 'the late replica loads the fleet state', timeoutMs: 30000 })
  for (let i = 0; i < 10; i++) t.equal(await colour(c), 'green', `late replica request ${i + 1}: stored weights`)
  t.equal(((await json(`${c.admin}/admin/services`)).body.review as { version: number }).version, 2)

  // A replica killed without a goodbye: it leaves the live set after 3 heartbeats.
  await until(async () => (await liveIds(a)).length === 3 ? true : undefined, { what: 'three live replicas', timeoutMs: 60000 })
  const cId = (await json(`${c.admin}/admin/fleet`)).body.self as string
  c.g.child.kill('SIGKILL')
  await c.g.exited
  const left = await until(async () => {
    const ids = await liveIds(a)
    return ids.includes(cId) ? undefined : ids
  }, { what: 'the killed replica to leave the live set', timeoutMs: 60000 })
  t.equal(left.length, 2, 'two live replicas remain')
  const fleetView = await json(`${a.admin}/admin/fleet`)
  t.match((fleetView.body.replicas as Array<{ id: string, live: boolean }>).find((r) => r.id === cId), { live: false }, 'it is still listed, live: false')
  const after = await json(`${b.admin}/admin/services/review/traffic`, { method: 'PUT', body: { blue: 100 } })
  t.same((after.body.fleet as { pending: string[] }).pending, [], 'a change after it left waits for nobody dead')
  t.equal(await colour(a), 'blue')

  for (const r of [a, b]) r.g.child.kill('SIGTERM')
  for (const r of [a, b]) t.equal((await r.g.exited)[0], 0, 'stops with 0')
})

t.test('the PostgreSQL server SIGKILLed under load: no failed request, admin changes 503, reconnect and re-read after its restart', async (t) => {
  const url = await pg.database('cli_outage')
  const file = writeConfig(t, configText(url))
  const [a, b] = await Promise.all([startReplica(t, file), startReplica(t, file)])
  await until(async () => (await ready(a)) && (await ready(b)) ? true : undefined, { what: 'both replicas ready', timeoutMs: 30000 })
  t.equal((await json(`${a.admin}/admin/services/review/traffic`, { method: 'PUT', body: { blue: 50, green: 50 } })).status, 200)

  let stop = false
  let ok = 0
  const failed: string[] = []
  const loop = async (r: Replica): Promise<void> => {
    while (!stop) {
      try {
        const res = await request(`${r.url}/reviews/1`, { dispatcher: agent })
        await res.body.dump()
        if (res.statusCode === 200) ok++
        else failed.push(`status ${res.statusCode}`)
      } catch (err) {
        failed.push(String(err))
      }
    }
  }
  const loops = [a, b, a, b, a, b].map(loop)
  try {
    await until(() => ok > 50 ? true : undefined, { what: 'some load', timeoutMs: 60000 })
    await pg.kill()
    await until(() => [a, b].every((r) => r.g.lines.some((l) => l.event === 'fleet' && l.state === 'disconnected')) ? true : undefined, { what: 'both replicas to see the store gone', timeoutMs: 20000 })
    const during = ok
    const refused = await json(`${b.admin}/admin/services/review/traffic`, { method: 'PUT', body: { green: 100 } })
    t.equal(refused.status, 503, 'an admin change while the store is down')
    t.equal(refused.body.code, 'GW_FLEET_UNAVAILABLE')
    const services = await json(`${a.admin}/admin/services`)
    t.equal(services.status, 200, 'GET /admin/services still answers')
    t.same((services.body.review as { traffic: unknown }).traffic, { blue: 50, green: 50 }, 'nothing changed')
    const metrics = await request(`${a.admin}/metrics`, { dispatcher: agent })
    t.match(await metrics.body.text(), /^gateway_fleet_connected 0$/m, 'gateway_fleet_connected 0')
    await until(() => ok > during + 100 ? true : undefined, { what: 'more load served during the outage', timeoutMs: 20000 })

    await pg.restart()
    // What the replicas find on reconnect: a newer state (as if written while they were away, no notification).
    await pg.query(`UPDATE lattice_gateway_versions SET version = version + 1, weights = '{"blue":0,"green":100}' WHERE fleet = 'cli' AND service = 'review'`, [], 'cli_outage')
    await until(() => [a, b].every((r) => r.g.lines.filter((l) => l.event === 'fleet' && l.state === 'connected').length >= 2) ? true : undefined, { what: 'both replicas reconnected', timeoutMs: 30000 })
    await until(async () => (await colour(a)) === 'green' && (await colour(b)) === 'green' ? true : undefined, { what: 'both replicas re-read the newer weights', timeoutMs: 60000 })
    const again = await json(`${a.admin}/admin/services/review/traffic`, { method: 'PUT', body: { blue: 100 } })
    t.equal(again.status, 200, 'admin changes work again')
    t.same((again.body.fleet as { pending: string[] }).pending, [])
    t.equal(await colour(b), 'blue', 'and reach the other replica')
  } finally {
    stop = true
    await Promise.all(loops)
  }
  t.equal(failed.length, 0, `no failed request out of ${ok} (failures: ${failed.slice(0, 3).join('; ')})`)
  t.ok(ok > 150, `${ok} requests served across the outage`)
  for (const r of [a, b]) {
    const disc = r.g.lines.filter((l) => l.event === 'fleet' && l.state === 'disconnected').length
    t.equal(disc, 1, 'one disconnect line per replica')
    t.notOk(JSON.stringify(r.g.lines).includes('fleet-test-pw'), 'the password is never logged')
  }
  for (const r of [a, b]) r.g.child.kill('SIGTERM')
  for (const r of [a, b]) await r.g.exited
})

t.test('lattice-gateway migrate --config: creates the tables and exits 0; without fleet, exit 1', async (t) => {
  const url = await pg.database('cli_migrate')
  const file = writeConfig(t, configText(url))
  const run = (f: string): Promise<{ status: number | null, stdout: string, stderr: string }> => new Promise((resolve) => {
    const c = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'migrate', '--config', f], { cwd: root, env: childEnv })
    let stdout = ''
    let stderr = ''
    c.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    c.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    c.on('exit', (status) => resolve({ status, stdout, stderr }))
  })
  const noFleet = writeConfig(t, configText(url).replace(/^fleet:.*$/m, ''))
  const down = writeConfig(t, configText('postgres://x:y@127.0.0.1:1/none'))
  const first = await run(file)
  t.equal(first.status, 0, first.stderr)
  t.match(first.stdout, /tables created/)
  t.notMatch(first.stdout + first.stderr, /fleet-test-pw/, 'no password printed')
  const tables = await pg.query(`SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE 'lattice_gateway_%'`, [], 'cli_migrate')
  t.equal(tables.rows[0].n, 5, 'five tables: the fleet\'s four and the rollouts\' (SPEC §11)')
  const [again, none, unreachable] = await Promise.all([run(file), run(noFleet), run(down)])
  t.equal(again.status, 0, 'again: nothing to do, exit 0')
  t.match(again.stdout, /already present/)
  t.equal(none.status, 1, 'no fleet in the config: exit 1')
  t.equal(unreachable.status, 2, 'store unreachable: exit 2')
  t.notMatch(unreachable.stderr, /:y@/, 'the password is not printed')
})
