/**
 * Multi-core (`server.workers: 2`): the real CLI as a child process, a
 * blue/green service whose deployments are test upstreams. Admin changes
 * made through the one admin listener reach every worker before the answer;
 * a worker killed from outside is restarted and takes the current weights;
 * /metrics covers the workers; SIGTERM drains all and exits 0.
 *
 * Every request opens its own connection, so the cluster spreads them over
 * both workers; the access log's `pid` says which worker served each.
 * A worker that cannot start stops the whole gateway with its exit code.
 */
import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { get, createServer as createHttpServer } from 'node:http'
import { createServer, type AddressInfo } from 'node:net'
import { request } from 'undici'
import { startUpstream, json } from './helpers/upstream.js'
import { root, childEnv, untilHealthy, spawnGateway, writeConfig } from './helpers/cli.js'
import { until } from './helpers/until.js'

// Child processes (a primary and its workers) start slowly on a busy machine: room for it.
t.setTimeout(300000)

const TOKEN = 'cluster-test-token'


/** One GET on a connection of its own (no keep-alive agent). */
function getOnce (url: string): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    get(url, { agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    }).on('error', reject)
  })
}

/** `n` requests, `width` at a time; the names of the deployments that answered. */
async function names (url: string, n: number, width = 8): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i += width) {
    const batch = await Promise.all(Array.from({ length: Math.min(width, n - i) }, (_, j) => getOnce(`${url}/app/${i + j}`)))
    for (const r of batch) out.push(r.status === 200 ? (JSON.parse(r.body) as { name: string }).name : `status ${r.status}`)
  }
  return out
}

t.test('workers: 2 — admin changes reach every worker, a killed worker comes back with them, SIGTERM exits 0', async (t) => {
  const blue = await startUpstream('blue', (_req, res) => json(res, 200, { name: 'blue' }))
  const green = await startUpstream('green', (_req, res) => json(res, 200, { name: 'green' }))
  t.teardown(async () => { await blue.close(); await green.close() })

  const config = writeConfig(t, `
server:
  host: 127.0.0.1
  port: 0
  workers: 2
  shutdownGraceMs: 5000
admin:
  host: 127.0.0.1
  port: 0
  token: ${TOKEN}
services:
  app:
    healthCheck: { intervalMs: 50, unhealthyThreshold: 1, healthyThreshold: 1 }
    deployments:
      blue: { primary: ${blue.url} }
      green: { primary: ${green.url} }
    traffic: { blue: 100, green: 0 }
routes:
  - type: proxy
    prefix: /app
    service: app
`)

  const { child, exited, lines, stderr, logged } = spawnGateway(config)
  t.teardown(() => {
    // The primary's children go with it: end the workers first, by the pids they logged.
    for (const l of lines) if (typeof l.workerPid === 'number') { try { process.kill(l.workerPid, 'SIGKILL') } catch {} }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const alive = (): void => { if (child.exitCode !== null) throw new Error(`the gateway exited early (${child.exitCode}): ${stderr()}`) }
  /** Worker id -> pid, from the primary's "worker N listening" lines. */
  const workerPids = (): Map<number, number> => new Map(lines.filter((l) => /^worker \d+ listening$/.test(String(l.msg))).map((l) => [l.worker as number, l.workerPid as number]))
  /** Access-log lines of proxied requests, by the pid of the worker that served them. */
  const servedBy = (): Map<number, number> => {
    const m = new Map<number, number>()
    for (const l of lines) if (l.msg === 'request' && typeof l.url === 'string' && l.url.startsWith('/app/')) m.set(l.pid as number, (m.get(l.pid as number) ?? 0) + 1)
    return m
  }

  // Workers flush their log lines a little later than the primary writes its own.
  await until(() => { alive(); return workerPids().size === 2 && logged(/^admin listening on/) !== undefined && logged(/^gateway listening on/) !== undefined ? true : undefined }, { what: 'both workers to listen' })
  const gateway = logged(/^gateway listening on (http:\/\/\S+)/)!
  const admin = logged(/^admin listening on (http:\/\/\S+)/)!
  t.equal(lines.filter((l) => /^admin listening on/.test(String(l.msg))).length, 1, 'one worker holds the admin listener')
  await untilHealthy(admin)

  const setTraffic = async (weights: Record<string, number>): Promise<unknown> => {
    const res = await request(`${admin}/admin/services/app/traffic`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(weights) })
    t.equal(res.statusCode, 200, `PUT traffic ${JSON.stringify(weights)}`)
    return ((await res.body.json()) as { traffic: unknown }).traffic
  }

  t.same(await names(gateway, 16), Array(16).fill('blue'), 'before any change: all blue')
  t.same(await setTraffic({ green: 100 }), { blue: 0, green: 100 }, 'the admin API answers with the new weights')
  t.same(await names(gateway, 40), Array(40).fill('green'), 'right after the answer every worker sends to green')
  const pids = await until(() => servedBy().size >= 2 ? [...servedBy().keys()] : undefined, { what: 'access-log lines of two workers' })
  t.ok(pids.every((p) => [...workerPids().values()].includes(p)) && new Set(pids).size === 2, `requests were served by two worker processes (${pids.join(', ')})`)

  // A worker killed from outside: the primary restarts it, and it takes the current weights (green) before it listens.
  const [, victimPid] = [...workerPids()].find(([id]) => id !== 1)!
  process.kill(victimPid, 'SIGKILL')
  await until(() => { alive(); return workerPids().size === 3 ? true : undefined }, { what: 'the replacement worker to listen' })
  t.match(logged(/^(worker \d+ exited unexpectedly: restarted as worker \d+)$/), /restarted as worker 3/, 'the restart is logged')
  t.same(await names(gateway, 24), Array(24).fill('green'), 'the restarted worker sends to green too')

  t.same(await setTraffic({ blue: 100 }), { blue: 100, green: 0 }, 'rolled back')
  t.same(await names(gateway, 40), Array(40).fill('blue'), 'after the rollback every worker sends to blue')
  const versioned = await request(`${admin}/admin/services/app`, { headers: { authorization: `Bearer ${TOKEN}` } })
  t.equal(((await versioned.body.json()) as { version: number }).version, 3, 'two changes: version 3 (one counter for the whole cluster)')
  const history = await request(`${admin}/admin/services/app/history`, { headers: { authorization: `Bearer ${TOKEN}` } })
  t.same(((await history.body.json()) as Array<{ version: number }>).map((e) => e.version), [3, 2], 'both changes in the history, newest first')

  // /metrics: the live workers' requests, summed (the killed worker's counts went with it).
  const live = [...workerPids()].filter(([, pid]) => pid !== victimPid).map(([, pid]) => pid)
  const counted = await until(async () => {
    const res = await request(`${admin}/metrics`)
    const text = await res.body.text()
    const m = /^gateway_requests_total\{route="\/app",method="GET",status="200"\} (\d+)$/m.exec(text)
    const fromLogs = live.reduce((sum, pid) => sum + (servedBy().get(pid) ?? 0), 0)
    return m !== null && Number(m[1]) === fromLogs && /gateway_traffic_weight\{service="app",deployment="blue"\} 100$/m.test(text) ? fromLogs : undefined
  }, { what: '/metrics to count the live workers\' requests' })
  t.ok(counted > (servedBy().get(live[0]!) ?? 0) && counted > (servedBy().get(live[1]!) ?? 0), `/metrics counts both workers (${counted} requests)`)

  child.kill('SIGTERM')
  const [code, signal] = await exited
  t.equal(code, 0, `exit code 0 (stderr: ${stderr().slice(0, 500)})`)
  t.equal(signal, null)
  t.ok(lines.filter((l) => l.msg === 'stopped').length >= 3, 'both workers and the primary logged "stopped"')
})

t.test('workers: 2 and the public port taken: the gateway stops with exit code 2', async (t) => {
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => taken.close())
  const port = (taken.address() as AddressInfo).port
  const config = writeConfig(t, `
server: { host: 127.0.0.1, port: ${port}, workers: 2 }
admin: { host: 127.0.0.1, port: 0 }
services:
  app:
    origins: { primary: http://127.0.0.1:1 }
routes:
  - { type: proxy, prefix: /app, service: app }
`)
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--config', config], { cwd: root, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { out += d })
  const [code] = await (once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>)
  t.equal(code, 2, 'exit code 2, as without workers')
  t.match(out, /exited before listening: stopping the gateway/, 'the primary says why')
  t.notMatch(out, /EPIPE|Unhandled/, 'no crash of the primary on the way out')
})

/** The pid of the local process whose TCP socket has local port `port` (Linux, through `ss`). */
function pidOfLocalPort (port: number): number | null {
  const out = execFileSync('ss', ['-tnpH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' })
  const m = /pid=(\d+)/.exec(out)
  return m === null ? null : Number(m[1])
}

t.test('workers: 2 — a failback a worker cannot make yet is pending there (a restarted worker too) and applied once its primary is healthy', async (t) => {
  // The primary's /health answers per worker: the test decides which worker processes see it healthy.
  let healthyFor: (pid: number | null) => boolean = () => false
  const primary = createHttpServer((req, res) => {
    if (req.url === '/health') {
      const ok = healthyFor(pidOfLocalPort(req.socket.remotePort!))
      res.writeHead(ok ? 200 : 503).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ name: 'primary' }))
  })
  await new Promise<void>((resolve) => primary.listen(0, '127.0.0.1', resolve))
  const secondary = await startUpstream('secondary', (_req, res) => json(res, 200, { name: 'secondary' }))
  t.teardown(async () => { primary.closeAllConnections(); primary.close(); await secondary.close() })
  const config = writeConfig(t, `
server: { host: 127.0.0.1, port: 0, workers: 2, shutdownGraceMs: 5000 }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
services:
  app:
    failback: manual
    healthCheck: { intervalMs: 100, timeoutMs: 2000, unhealthyThreshold: 1, healthyThreshold: 1 }
    origins: { primary: http://127.0.0.1:${(primary.address() as AddressInfo).port}, secondary: ${secondary.url} }
routes:
  - { type: proxy, prefix: /app, service: app }
`)
  const { child, exited, lines, stderr, logged } = spawnGateway(config)
  t.teardown(() => {
    for (const l of lines) if (typeof l.workerPid === 'number') { try { process.kill(l.workerPid, 'SIGKILL') } catch {} }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const alive = (): void => { if (child.exitCode !== null) throw new Error(`the gateway exited early (${child.exitCode}): ${stderr()}`) }
  const workers = (): Map<number, number> => new Map(lines.filter((l) => /^worker \d+ listening$/.test(String(l.msg))).map((l) => [l.worker as number, l.workerPid as number]))
  await until(() => { alive(); return workers().size === 2 && logged(/^admin listening on/) !== undefined && logged(/^gateway listening on/) !== undefined ? true : undefined }, { what: 'both workers to listen' })
  const admin = logged(/^admin listening on (http:\/\/\S+)/)!
  const adminLine = lines.find((l) => /^admin listening on/.test(String(l.msg)))!
  const adminWorker = adminLine.worker as number
  const adminPid = adminLine.pid as number
  const other = [...workers()].find(([id]) => id !== adminWorker)!
  const switched = (worker: number, to: string): boolean => lines.some((l) => l.event === 'failover' && l.worker === worker && l.to === to)
  await until(() => { alive(); return switched(adminWorker, 'secondary') && switched(other[0], 'secondary') ? true : undefined }, { what: 'both workers on the secondary' })

  // The admin worker sees the primary healthy, the other worker does not.
  healthyFor = (pid) => pid === adminPid
  await until(() => { alive(); return lines.some((l) => l.event === 'origin_health' && l.worker === adminWorker && l.origin === 'primary' && l.healthy === true) ? true : undefined }, { what: 'the admin worker to see the primary healthy' })
  const res = await request(`${admin}/admin/services/app/deployments/default/failback`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })
  const body = await res.body.json() as { failedBack: boolean, workers: { applied: number[], pending: number[] } }
  t.equal(res.statusCode, 200)
  t.equal(body.failedBack, true)
  t.same(body.workers, { applied: [adminWorker], pending: [other[0]] }, 'the answer says which worker applied it and which waits for its primary')
  t.ok(await until(() => lines.some((l) => l.event === 'failback_pending' && l.worker === other[0]) ? true : undefined, { what: 'the pending line' }), 'the waiting worker logs it')
  t.notOk(switched(other[0], 'primary'), 'the other worker stays on the secondary while its primary is unhealthy')

  // The waiting worker dies: its replacement takes the pending failback with the weights.
  process.kill(other[1], 'SIGKILL')
  await until(() => { alive(); return workers().size === 3 ? true : undefined }, { what: 'the replacement worker to listen' })
  const [replacement] = [...workers()].find(([id]) => id !== adminWorker && id !== other[0])!
  await until(() => { alive(); return switched(replacement, 'secondary') ? true : undefined }, { what: 'the replacement to find its primary unhealthy' })
  t.notOk(switched(replacement, 'primary'), 'the replacement stays on the secondary while its primary is unhealthy')

  // Its primary turns healthy: traffic moves there without another call.
  healthyFor = () => true
  await until(() => { alive(); return switched(replacement, 'primary') ? true : undefined }, { what: 'the replacement to fail back' })
  const fb = lines.find((l) => l.event === 'failover' && l.worker === replacement && l.to === 'primary')!
  t.equal(fb.kind, 'failback', 'a failback (on a manual deployment only an operator request does that)')
  t.match(fb.reason, /operator failback/)

  child.kill('SIGTERM')
  const [code] = await exited
  t.equal(code, 0)
})

t.test('workers: 2 — a worker killed during the drain: the gateway says so and exits 1', async (t) => {
  const held: Array<import('node:http').ServerResponse> = []
  const up = await startUpstream('up', (_req, res) => { held.push(res) })
  t.teardown(async () => { for (const r of held.splice(0)) json(r, 200, {}); await up.close() })
  const config = writeConfig(t, `
server: { host: 127.0.0.1, port: 0, workers: 2, shutdownGraceMs: 20000 }
admin: { host: 127.0.0.1, port: 0 }
services:
  app:
    healthCheck: { intervalMs: 1000, timeoutMs: 2000 }
    timeoutMs: 30000
    origins: { primary: ${up.url} }
routes:
  - { type: proxy, prefix: /app, service: app }
`)
  const { child, exited, lines, stderr, logged } = spawnGateway(config)
  t.teardown(() => {
    for (const l of lines) if (typeof l.workerPid === 'number') { try { process.kill(l.workerPid, 'SIGKILL') } catch {} }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const alive = (): void => { if (child.exitCode !== null) throw new Error(`the gateway exited early (${child.exitCode}): ${stderr()}`) }
  const workers = (): number[] => lines.filter((l) => /^worker \d+ listening$/.test(String(l.msg))).map((l) => l.workerPid as number)
  await until(() => { alive(); return workers().length === 2 && logged(/^gateway listening on/) !== undefined ? true : undefined }, { what: 'both workers to listen', timeoutMs: 45000 })
  const url = logged(/^gateway listening on (http:\/\/\S+)/)!
  // Requests on connections of their own, held by the upstream: both workers have one in flight.
  const pending = Array.from({ length: 6 }, (_, i) => getOnce(`${url}/app/${i}`).catch(() => null))
  await until(() => held.length === 6 ? true : undefined, { what: 'six requests held' })

  child.kill('SIGTERM')
  await until(() => lines.filter((l) => typeof l.worker === 'number' && /^draining/.test(String(l.msg))).length === 2 ? true : undefined, { what: 'both workers draining' })
  process.kill(workers()[0]!, 'SIGKILL')
  await until(() => logged(/(did not drain cleanly)/) !== undefined ? true : undefined, { what: 'the primary to notice' })
  for (const r of held.splice(0)) json(r, 200, { name: 'up' })
  await Promise.all(pending)
  const [code] = await exited
  t.equal(code, 1, 'exit code 1')
  t.match(lines.find((l) => /did not drain cleanly/.test(String(l.msg))), { level: 50, signal: 'SIGKILL' }, 'logged at error level with the signal')
  t.match(lines.find((l) => l.msg === 'stopped' && l.role === 'primary'), { exitCode: 1 })
})

t.test('workers: 2 and the primary SIGKILLed: the workers exit instead of lingering on the admin port', async (t) => {
  const up = await startUpstream('app', (_req, res) => json(res, 200, { ok: true }))
  t.teardown(() => up.close())
  const config = writeConfig(t, `
server:
  host: 127.0.0.1
  port: 0
  workers: 2
  shutdownGraceMs: 2000
admin:
  host: 127.0.0.1
  port: 0
  token: ${TOKEN}
services:
  app:
    origins: { primary: ${up.url} }
routes:
  - type: proxy
    prefix: /app
    service: app
`)
  const { child, lines, logged } = spawnGateway(config)
  const workerPids = (): number[] => lines.filter((l) => /^worker \d+ listening$/.test(String(l.msg))).map((l) => l.workerPid as number)
  t.teardown(() => {
    for (const pid of workerPids()) { try { process.kill(pid, 'SIGKILL') } catch {} }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  await until(() => workerPids().length === 2 && logged(/^gateway listening on/) !== undefined ? true : undefined, { what: 'both workers to listen', timeoutMs: 120000 })
  const pids = workerPids()
  child.kill('SIGKILL')
  const gone = (pid: number): boolean => { try { process.kill(pid, 0); return false } catch { return true } }
  t.ok(await until(() => pids.every(gone) ? true : undefined, { what: 'the workers to exit', timeoutMs: 30000 }), 'both workers exited after their primary died')
})
