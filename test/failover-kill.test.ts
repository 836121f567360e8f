// The primary dies under load (SPEC §4, issue: "a client must not notice an
// origin dying"): closed-loop GETs keep running while the primary is killed —
// in-process (every socket destroyed at once) and as a real child process
// that gets SIGKILL. Not one GET may fail, and traffic must end up on the
// secondary. The load is bounded by a request count and a deadline.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { request } from 'undici'
import { startUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'


const LOOPS = 8
const BEFORE_KILL = 80 // successful GETs before the kill
const AFTER_SWITCH = 100 // GETs to run after the switch, all on the secondary
const DEADLINE_MS = 30000 // after the kill: a bound for a broken gateway, never reached by a working one however busy the machine

interface Outcome { ok: boolean, name: string, detail: string }

/**
 * Closed-loop load: `LOOPS` clients each send a GET as soon as the previous
 * answer is read. Calls `kill()` once BEFORE_KILL GETs succeeded, and stops
 * AFTER_SWITCH GETs after the gateway switched (or at the deadline).
 */
async function killUnderLoad (g: TestGateway, kill: () => Promise<void> | void): Promise<{ outcomes: Outcome[], killedAt: number, switchedAt: number | null }> {
  const outcomes: Outcome[] = []
  const group = g.gw.registry.get('product')!.groups.get('default')!
  let killedAt = -1
  let killDeadline = Infinity
  let switchedAt: number | null = null
  group.on('failover', (e) => { if (e.to === 'secondary' && switchedAt === null) switchedAt = outcomes.length })
  const done = (): boolean => (switchedAt !== null && outcomes.length >= switchedAt + AFTER_SWITCH) || Date.now() > killDeadline
  async function loop (): Promise<void> {
    while (!done()) {
      let o: Outcome
      try {
        const res = await request(`${g.url}/api/items/1`)
        const body = await res.body.text()
        const name = res.statusCode === 200 ? (JSON.parse(body) as { name: string }).name : ''
        o = { ok: res.statusCode === 200, name, detail: `${res.statusCode} ${body.slice(0, 200)}` }
      } catch (err) {
        o = { ok: false, name: '', detail: String(err) }
      }
      outcomes.push(o)
      if (killedAt === -1 && outcomes.filter((x) => x.ok).length >= BEFORE_KILL) {
        killedAt = outcomes.length
        killDeadline = Date.now() + DEADLINE_MS
        await kill()
      }
    }
  }
  await Promise.all(Array.from({ length: LOOPS }, loop))
  return { outcomes, killedAt, switchedAt }
}

function verdict (t: Test, g: TestGateway, r: Awaited<ReturnType<typeof killUnderLoad>>): void {
  const failed = r.outcomes.filter((o) => !o.ok)
  t.equal(failed.length, 0, `zero failed GETs out of ${r.outcomes.length}${failed.length > 0 ? ': ' + failed.slice(0, 3).map((f) => f.detail).join(' | ') : ''}`)
  t.ok(r.killedAt > 0, 'the primary was killed under load')
  t.ok(r.outcomes.slice(0, r.killedAt).some((o) => o.name === 'primary'), 'before the kill the primary served')
  t.not(r.switchedAt, null, 'the gateway switched to the secondary')
  const tail = r.outcomes.slice(-AFTER_SWITCH)
  t.ok(tail.every((o) => o.name === 'secondary'), `the last ${AFTER_SWITCH} GETs were served by the secondary`)
  const group = g.gw.registry.get('product')!.groups.get('default')!
  t.equal(group.active.role, 'secondary')
  t.equal(group.primary.healthy, false)
  t.ok(g.logs.some((l) => l.event === 'failover' && l.kind === 'switch' && l.to === 'secondary'), 'the switch was logged')
}

const config = (primary: string, secondary: string): Record<string, unknown> => ({
  services: {
    product: fastService({ primary, secondary }, {
      // Generous probe timeout: a busy machine must not fail the secondary's probes.
      healthCheck: { intervalMs: 50, timeoutMs: 1000, unhealthyThreshold: 2, healthyThreshold: 2 },
      circuitBreaker: { volumeThreshold: 10, resetTimeoutMs: 60000 }
    })
  },
  routes: [{ type: 'proxy', prefix: '/api', service: 'product' }]
})

t.test('in-process primary killed under load: zero failed GETs, traffic on the secondary', async (t) => {
  const pri = await startUpstream('primary')
  const sec = await startUpstream('secondary')
  const g = await startGateway(config(pri.url, sec.url))
  t.teardown(async () => { await g.close(); await pri.close(); await sec.close() })
  const r = await killUnderLoad(g, () => pri.kill())
  verdict(t, g, r)
})

/** A plain node:http upstream in its own process; prints its port, answers `{ name }`. */
const UPSTREAM_SCRIPT = `
const http = require('node:http')
const name = process.argv[1]
const server = http.createServer((req, res) => {
  const body = JSON.stringify({ name, url: req.url })
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  res.end(body)
})
server.listen(0, '127.0.0.1', () => console.log(server.address().port))
process.stdin.on('end', () => process.exit(0)); process.stdin.resume()
`

async function spawnUpstream (name: string): Promise<{ url: string, child: ChildProcess }> {
  const child = spawn(process.execPath, ['-e', UPSTREAM_SCRIPT, name], { stdio: ['pipe', 'pipe', 'inherit'] })
  const port = await new Promise<string>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`upstream ${name} exited with ${code}`)))
    createInterface({ input: child.stdout! }).once('line', resolve)
  })
  return { url: `http://127.0.0.1:${port}`, child }
}

function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill('SIGKILL')
  })
}

t.test('child-process primary SIGKILLed under load: zero failed GETs, traffic on the secondary', async (t) => {
  const pri = await spawnUpstream('primary')
  const sec = await spawnUpstream('secondary')
  const g = await startGateway(config(pri.url, sec.url))
  t.teardown(async () => { await g.close(); await stop(pri.child); await stop(sec.child) })
  const r = await killUnderLoad(g, () => stop(pri.child))
  t.equal(pri.child.signalCode, 'SIGKILL')
  verdict(t, g, r)
})
