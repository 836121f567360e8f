/**
 * SPEC §16: every line the real process writes to stdout is one JSON
 * object with no key twice, at any level. The real CLI runs as a child at
 * `logLevel: debug` through a failover and a failback, a blue/green cutover,
 * a Lattice resolution failure and client errors (404, 400, 502); after it
 * stops, every stdout line is scanned (JSON.parse would silently keep the
 * last of two equal keys). The same for a cluster (`server.workers: 2`),
 * whose primary and workers share one stdout.
 */
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startUpstream, json } from './helpers/upstream.js'
import { startFakeLattice } from './helpers/fake-lattice.js'
import { rawRequest } from './helpers/raw-http.js'
import { childEnv, until, untilHealthy, spawnGateway, writeConfig, type GatewayChild } from './helpers/cli.js'
import { duplicateKeys } from './helpers/json-keys.js'

const TOKEN = 'log-lines-test-token'

t.test('the scanner finds a key twice at any level and rejects what is not JSON', async (t) => {
  t.same(duplicateKeys('{"a":1,"b":{"c":[{"d":1,"d":2}]},"a":"x"}'), ['b.c[0].d', 'a'])
  t.same(duplicateKeys('{"a":{"a":1},"b":[1,"a",{"a":{}}]}'), [], 'the same key in different objects is fine')
  t.same(duplicateKeys('{"k\\"":1,"k\\u0022":2}'), ['k"'], 'keys compare after unescaping')
  t.throws(() => duplicateKeys('{"a":1}{"b":2}'), SyntaxError, 'two objects on one line')
  t.throws(() => duplicateKeys('{"a":1,}'), SyntaxError)
  t.throws(() => duplicateKeys('{"a":01}'))
})

/** Checks every stdout line of a finished child. */
function checkLines (t: Test, child: GatewayChild): void {
  let bad = 0
  for (const line of child.raw) {
    let dups: string[]
    try {
      dups = duplicateKeys(line)
    } catch (err) {
      bad++
      t.fail(`not one JSON object: ${(err as Error).message}`)
      continue
    }
    if (dups.length > 0) {
      bad++
      t.fail(`key twice (${dups.join(', ')}): ${line}`)
    }
  }
  t.equal(bad, 0, `all ${child.raw.length} stdout lines are JSON objects with no key twice`)
  const named = child.lines.filter((l) => l.name === 'lattice-gateway').length
  t.equal(named, child.lines.length, 'the process identity is `name` on every line')
}

t.test('one gateway process: failover, cutover, Lattice failure and client errors log clean lines', async (t) => {
  const primary = await startUpstream('primary')
  const secondary = await startUpstream('secondary')
  const blue = await startUpstream('blue', (_req, res) => json(res, 200, { name: 'blue' }))
  const green = await startUpstream('green', (_req, res) => json(res, 200, { name: 'green' }))
  // Answers health probes, drops every proxied request's connection: a 502.
  const broken = await startUpstream('broken', (req) => { req.socket.destroy() })
  const fake = await startFakeLattice()
  fake.failWith = { status: 500, type: 'InternalServerException', message: 'the control plane is down' }
  t.teardown(async () => { for (const u of [primary, secondary, blue, green, broken, fake]) await u.close() })

  const health = '{ intervalMs: 100, timeoutMs: 1000, unhealthyThreshold: 1, healthyThreshold: 1 }'
  const config = writeConfig(t, `
server: { host: 127.0.0.1, port: 0, logLevel: debug, shutdownGraceMs: 5000 }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
lattice: { region: us-east-1, endpoint: ${fake.url}, refreshIntervalMs: 200 }
services:
  product:
    healthCheck: ${health}
    origins: { primary: ${primary.url}, secondary: ${secondary.url} }
  app:
    healthCheck: ${health}
    deployments:
      blue: { primary: ${blue.url} }
      green: { primary: ${green.url} }
    traffic: { blue: 100, green: 0 }
  broken:
    healthCheck: ${health}
    retry: { methods: [] }
    origins: { primary: ${broken.url} }
  remote:
    healthCheck: ${health}
    origins: { primary: { lattice: { service: reviews, port: 80, protocol: http } } }
routes:
  - { type: proxy, prefix: /p, service: product }
  - { type: proxy, prefix: /app, service: app }
  - { type: proxy, prefix: /broken, service: broken }
  - { type: proxy, prefix: /remote, service: remote }
`)
  const gw = spawnGateway(config, { ...childEnv, AWS_ACCESS_KEY_ID: 'AKIDLOGLINES', AWS_SECRET_ACCESS_KEY: 'log/lines/secret', AWS_REGION: 'us-east-1' })
  t.teardown(() => { if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL') })
  const alive = (): void => { if (gw.child.exitCode !== null) throw new Error(`the gateway exited early (${gw.child.exitCode}): ${gw.stderr()}`) }
  await until('both listeners', () => { alive(); return gw.logged(/^gateway listening on/) !== undefined && gw.logged(/^admin listening on/) !== undefined ? true : undefined })
  const url = gw.logged(/^gateway listening on (http:\/\/\S+)/)!
  const admin = gw.logged(/^admin listening on (http:\/\/\S+)/)!
  await untilHealthy(admin)
  const get = async (path: string): Promise<number> => {
    const res = await request(`${url}${path}`)
    await res.body.dump()
    return res.statusCode
  }

  // Failover and failback.
  t.equal(await get('/p/one'), 200)
  await primary.kill()
  await until('the switch to the secondary', () => { alive(); return gw.lines.some((l) => l.event === 'failover' && l.to === 'secondary') ? true : undefined })
  t.equal(await get('/p/two'), 200, 'served by the secondary')
  await primary.revive()
  await until('the failback', () => { alive(); return gw.lines.some((l) => l.event === 'failover' && l.kind === 'failback') ? true : undefined })

  // Cutover.
  const put = await request(`${admin}/admin/services/app/traffic`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ green: 100 }) })
  t.equal(put.statusCode, 200, 'cutover accepted')
  await put.body.dump()
  t.equal(await get('/app/x'), 200)

  // Lattice: every lookup fails.
  await until('a Lattice failure line', () => { alive(); return gw.lines.some((l) => l.event === 'lattice' && l.state !== 'resolved') ? true : undefined })
  t.equal(await get('/remote/x'), 502, 'a service without an address answers 502')

  // Client errors.
  t.equal(await get('/nowhere'), 404)
  t.equal(await get('/broken/x'), 502)
  const noHost = await rawRequest(url, 'GET /p/x HTTP/1.1\r\nConnection: close\r\n\r\n')
  t.equal(noHost.status, 400, 'a request without Host: 400')
  const garbage = await rawRequest(url, 'NOT HTTP AT ALL\r\n\r\n')
  t.equal(garbage.status, 400, 'a broken request line: 400')
  const unauthorised = await request(`${admin}/admin/services`)
  t.equal(unauthorised.statusCode, 401)
  await unauthorised.body.dump()

  gw.child.kill('SIGTERM')
  const [code] = await gw.exited
  t.equal(code, 0, 'stopped normally')
  for (const want of ['failover', 'origin_health', 'traffic', 'lattice']) {
    t.ok(gw.lines.some((l) => l.event === want), `an "${want}" event line was written`)
  }
  t.ok(gw.lines.some((l) => l.event === 'failover' && l.service === 'product'), 'event lines keep `service` for the upstream service')
  t.ok(gw.lines.some((l) => l.msg === 'request' && l.status === 502), 'an access line of a 502')
  t.ok(gw.lines.some((l) => l.level === 50 && typeof l.err === 'object'), 'an error line with a nested `err`')
  checkLines(t, gw)
})

t.test('a cluster (workers: 2): primary and worker lines are clean', async (t) => {
  const up = await startUpstream('up')
  t.teardown(() => up.close())
  const config = writeConfig(t, `
server: { host: 127.0.0.1, port: 0, workers: 2, logLevel: debug, shutdownGraceMs: 5000 }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
services:
  app:
    healthCheck: { intervalMs: 200, timeoutMs: 1000 }
    origins: { primary: ${up.url} }
routes:
  - { type: proxy, prefix: /app, service: app }
`)
  const gw = spawnGateway(config)
  t.teardown(() => {
    for (const l of gw.lines) if (typeof l.workerPid === 'number') { try { process.kill(l.workerPid, 'SIGKILL') } catch {} }
    if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL')
  })
  await until('both workers to listen', () => {
    if (gw.child.exitCode !== null) throw new Error(`exited early: ${gw.stderr()}`)
    return gw.lines.filter((l) => /^worker \d+ listening$/.test(String(l.msg))).length === 2 && gw.logged(/^gateway listening on/) !== undefined ? true : undefined
  })
  const url = gw.logged(/^gateway listening on (http:\/\/\S+)/)!
  // Long URLs, many at once: worker lines fill their buffers side by side.
  const pad = 'x'.repeat(900)
  for (let round = 0; round < 10; round++) {
    await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const res = await request(`${url}/app/${round}-${i}?pad=${pad}`, { reset: true })
      await res.body.dump()
    }))
  }
  const put = await request(`${gw.logged(/^admin listening on (http:\/\/\S+)/)!}/admin/services/app/traffic`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ default: 100 }) })
  await put.body.dump()
  gw.child.kill('SIGTERM')
  const [code] = await gw.exited
  t.equal(code, 0)
  t.equal(gw.lines.filter((l) => l.msg === 'request' && String(l.url).startsWith('/app/')).length, 200, 'every access line arrived whole')
  t.ok(gw.lines.some((l) => typeof l.worker === 'number' && typeof l.pid === 'number'), 'worker lines carry worker and pid')
  checkLines(t, gw)
})
