/**
 * Rollouts across a fleet (SPEC §10, §11), with two real gateway processes
 * on a real PostgreSQL: exactly one drives; its analysis sums the other
 * replica's published counts (all client traffic goes to the replica that
 * does not drive); the driver is SIGKILLed mid-rollout and the other
 * replica takes over from the stored state and finishes it.
 */
import t from 'tap'
import { request } from 'undici'
import { startPostgres } from './helpers/postgres.js'
import { spawnGateway, writeConfig, untilHealthy, type GatewayChild } from './helpers/cli.js'
import { until as untilMet } from './helpers/until.js'

/** Polls `cond` until it gives a value (what, then the condition, as these tests read). */
const until = <T>(what: string, cond: () => T | undefined | Promise<T | undefined>, timeoutMs = 60000): Promise<T> => untilMet(cond, { what, timeoutMs }) as Promise<T>
import { deadPort } from './helpers/upstream.js'
import { TOKEN, client, colourUpstream } from './helpers/colours.js'

t.teardown(() => client.close())
// Two real gateway processes start (through tsx) on a machine other test files share: room beyond the file default.
t.setTimeout(240000)

interface Replica { g: GatewayChild, url: string, admin: string, id: string }

async function adminCall (admin: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number, body: Record<string, unknown> }> {
  const headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` }
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await request(`${admin}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), dispatcher: client })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

t.test('one driver sums the other replica\'s counts; killed mid-rollout, the other replica finishes it', async (t) => {
  const pg = await startPostgres(t)
  const url = await pg.database('rollouts')
  const blue = await colourUpstream('blue')
  const green = await colourUpstream('green')
  t.teardown(async () => { await blue.close(); await green.close() })

  async function replica (): Promise<Replica> {
    const port = await deadPort()
    const adminPort = await deadPort()
    const file = writeConfig(t, JSON.stringify({
      server: { host: '127.0.0.1', port, logLevel: 'info' },
      admin: { host: '127.0.0.1', port: adminPort, token: TOKEN },
      fleet: { url, name: 'rollout-test', heartbeatMs: 100, applyTimeoutMs: 3000 },
      services: {
        review: {
          timeoutMs: 2000,
          healthCheck: { intervalMs: 100, timeoutMs: 500 },
          deployments: { blue: { primary: blue.url }, green: { primary: green.url } },
          traffic: { blue: 100, green: 0 }
        }
      },
      routes: [{ type: 'proxy', prefix: '/reviews', service: 'review' }]
    }), 'gateway.json')
    const g = spawnGateway(file)
    t.teardown(async () => { if (g.child.exitCode === null && g.child.signalCode === null) { g.child.kill('SIGKILL'); await g.exited } })
    const admin = `http://127.0.0.1:${adminPort}`
    // A process start takes seconds on a shared machine: a longer wait than untilHealthy's default.
    await untilHealthy(admin, 120000)
    const id = await until('the fleet to load', async () => {
      const f = await adminCall(admin, 'GET', '/admin/fleet').catch(() => null)
      return f?.status === 200 && f.body.connected === true ? String(f.body.self) : undefined
    }, 30000)
    return { g, url: `http://127.0.0.1:${port}`, admin, id }
  }

  const a = await replica()
  const b = await replica()
  const drivers = await until('a driver', () => {
    const d = [a, b].filter((r) => r.g.lines.some((l) => l.event === 'rollout_driver' && l.driving === true))
    return d.length > 0 ? d : undefined
  }, 30000)
  t.equal(drivers.length, 1, 'exactly one replica drives')
  const driver = drivers[0]!
  const other = driver === a ? b : a

  // Client traffic only to the replica that does not drive.
  let stop = false
  let failed = 0
  const colours = new Map<string, number>()
  const loops = Array.from({ length: 4 }, async () => {
    for (let k = 0; !stop && k < 100000; k++) {
      try {
        const res = await request(`${other.url}/reviews/1`, { dispatcher: client })
        const body = await res.body.json() as { colour?: string }
        if (res.statusCode !== 200) failed++
        if (body.colour !== undefined) colours.set(body.colour, (colours.get(body.colour) ?? 0) + 1)
      } catch {
        failed++
      }
    }
  })
  t.teardown(async () => { stop = true; await Promise.all(loops) })

  const started = await adminCall(other.admin, 'POST', '/admin/services/review/rollouts', { to: 'green', steps: [20, 50, 100], stepIntervalMs: 3000, analysis: { minRequests: 10, maxP99Ratio: 50 } })
  t.equal(started.status, 201, 'started on the replica that does not drive')

  // The first analysis passes on counts only the other replica has: the driver summed them.
  const first = await until('step 2', async () => {
    const r = await adminCall(other.admin, 'GET', '/admin/services/review/rollout')
    return r.status === 200 && (r.body.step as number) >= 1 ? r.body : undefined
  }, 60000)
  t.equal(first.driver, driver.id, 'the driver made the move')
  const a0 = (first.analyses as Array<{ step: number, passed: boolean, candidate: { requests: number } }>)[0]!
  t.ok(a0.passed && a0.candidate.requests >= 10, `the driver judged step 1 on the other replica's ${a0.candidate.requests} candidate requests`)

  driver.g.child.kill('SIGKILL')
  await driver.g.exited

  const done = await until('the rollout to end', async () => {
    const r = await adminCall(other.admin, 'GET', '/admin/services/review/rollout')
    return r.status === 200 && r.body.status !== 'running' ? r.body : undefined
  }, 90000)
  stop = true
  await Promise.all(loops)
  t.equal(done.status, 'promoted', `the survivor finished it: ${String(done.reason)}`)
  t.equal(done.driver, other.id, 'the survivor drives now')
  t.same((done.analyses as Array<{ step: number, passed: boolean }>).map((x) => [x.step, x.passed]), [[0, true], [1, true], [2, true]], 'every step analysed once, before and after the takeover')
  t.ok(other.g.lines.some((l) => l.event === 'rollout_driver' && l.driving === true), 'the survivor logged that it took the lease')
  const services = await adminCall(other.admin, 'GET', '/admin/services/review')
  t.same(services.body.traffic, { blue: 0, green: 100 })
  const history = (await adminCall(other.admin, 'GET', '/admin/services/review/history')).body as unknown as Array<{ source: string, to: Record<string, number>, replica: string }>
  t.same(history.map((h) => [h.source, h.to.green]), [['rollout', 100], ['rollout', 50], ['rollout', 20]], 'every step a versioned fleet change with source rollout')
  t.equal(history[0]!.replica, other.id, 'the last change made by the new driver')
  t.equal(failed, 0, 'no client request failed')
  t.ok((colours.get('green') ?? 0) > 0)
})
