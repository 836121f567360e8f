/**
 * Graceful stop (SPEC §2): a gateway process that gets SIGTERM while
 * requests are in flight stops accepting connections, lets those requests
 * finish, and exits 0.
 *
 * The upstream holds its answers until the test releases them, so nothing
 * here depends on how fast the machine is: the drain is observed with the
 * requests provably still in flight.
 */
import t from 'tap'
import { connect } from 'node:net'
import type { ServerResponse } from 'node:http'
import { Agent, request } from 'undici'
import { startUpstream, json } from './helpers/upstream.js'
import { untilHealthy, spawnGateway, writeConfig } from './helpers/cli.js'
import { until } from './helpers/until.js'

// Child processes start slowly on a busy machine: room for it.
t.setTimeout(300000)



/** True when a TCP connection to host:port is refused. */
function refused (url: string): Promise<boolean> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const s = connect(Number(port), hostname)
    s.once('connect', () => { s.destroy(); resolve(false) })
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'))
  })
}

t.test('SIGTERM with requests in flight: they finish with 200, new connections are refused, exit 0', async (t) => {
  const held: ServerResponse[] = []
  const up = await startUpstream('slow', (_req, res) => { held.push(res) })
  const release = (): void => { for (const res of held.splice(0)) json(res, 200, { done: true }) }
  t.teardown(async () => { release(); await up.close() })

  const config = writeConfig(t, `
server:
  host: 127.0.0.1
  port: 0
  shutdownGraceMs: 20000
admin:
  host: 127.0.0.1
  port: 0
services:
  slow:
    timeoutMs: 20000
    origins:
      primary: ${up.url}
routes:
  - type: proxy
    prefix: /slow
    service: slow
`)

  const { child, exited, lines, stderr, logged } = spawnGateway(config)
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })

  const gateway = await until(() => {
    if (child.exitCode !== null) throw new Error(`the gateway exited early (${child.exitCode}): ${stderr()}`)
    return logged(/^gateway listening on (http:\/\/\S+)/)
  }, { what: 'the gateway to listen' })
  const admin = await until(() => logged(/^admin listening on (http:\/\/\S+)/), { what: 'the admin listener' })
  await untilHealthy(admin)

  const agent = new Agent()
  t.teardown(() => agent.close())
  const inflight = [1, 2, 3].map((i) => request(`${gateway}/slow/${i}`, { dispatcher: agent }))
  await until(() => held.length === 3 ? true : undefined, { what: 'the upstream to hold three requests' })

  child.kill('SIGTERM')
  await until(() => logged(/draining/), { what: 'the drain to start' })
  const refusedWhileDraining = await until(async () => (await refused(gateway)) ? true : undefined, { what: 'new connections to be refused' })
  t.ok(refusedWhileDraining, 'a new connection is refused once the drain started')
  t.equal(held.length, 3, 'while the in-flight requests are still waiting on the upstream')
  t.equal(child.exitCode, null, 'and the process is still running')
  const health = await request(`${admin}/healthz`)
  await health.body.dump()
  t.equal(health.statusCode, 503, '/healthz tells orchestrators the gateway is going away')

  release()
  const answers = await Promise.all(inflight)
  for (const res of answers) {
    t.equal(res.statusCode, 200)
    t.strictSame(await res.body.json(), { done: true })
  }
  const [code, signal] = await exited
  t.equal(signal, null)
  t.equal(code, 0, 'exit 0')
  t.ok(logged(/^stopped$/) !== undefined, 'logs that it stopped')
  t.equal(logged(/grace period over/), undefined, 'the drain ended with the requests, not with the grace period (the client kept its connections alive)')
  t.equal(stderr(), '')
})
