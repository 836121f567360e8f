// Active health checks (SPEC §4): `unhealthyThreshold` consecutive failed
// probes make an origin unhealthy, `healthyThreshold` consecutive good ones
// make it healthy; a probe that times out or answers non-2xx is a failure.
import t, { type Test } from 'tap'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { HealthChecker, type HealthTransition } from '../src/upstream/health-checker.js'
import type { Origin } from '../src/upstream/origin.js'


async function setup (t: Test, healthCheck: Record<string, unknown>, handler?: Parameters<typeof startUpstream>[1]): Promise<{ g: TestGateway, pri: TestUpstream, sec: TestUpstream, origin: Origin }> {
  const pri = await startUpstream('primary', handler)
  const sec = await startUpstream('secondary')
  const g = await startGateway({
    services: { product: fastService({ primary: pri.url, secondary: sec.url }, { healthCheck: { intervalMs: 50, timeoutMs: 5000, ...healthCheck } }) },
    routes: [{ type: 'proxy', prefix: '/api', service: 'product' }]
  })
  t.teardown(async () => { await g.close(); await pri.close(); await sec.close() })
  return { g, pri, sec, origin: g.gw.registry.get('product')!.groups.get('default')!.primary }
}

/** Resolves with the probe results seen up to (and including) the origin's next health transition. */
function untilTransition (origin: Origin, healthy: boolean, results: boolean[], timeoutMs = 30000): Promise<boolean[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no health transition')), timeoutMs)
    const on = (e: { healthy: boolean }): void => {
      if (e.healthy !== healthy) return
      clearTimeout(timer)
      origin.off('health', on)
      resolve([...results])
    }
    origin.on('health', on)
  })
}

const trailing = (xs: boolean[], v: boolean): number => {
  let n = 0
  for (let i = xs.length - 1; i >= 0 && xs[i] === v; i--) n++
  return n
}

async function probes (origin: Origin, results: boolean[], n: number): Promise<void> {
  const deadline = Date.now() + 30000
  while (results.length < n) {
    if (Date.now() > deadline) throw new Error('no probes')
    await new Promise((resolve) => origin.checker.once('probe', resolve))
  }
}

t.test('unhealthy after exactly unhealthyThreshold failed probes, healthy after exactly healthyThreshold good ones', async (t) => {
  const { g, pri, origin } = await setup(t, { unhealthyThreshold: 3, healthyThreshold: 4 })
  const results: boolean[] = []
  origin.checker.on('probe', (ok) => results.push(ok))
  await probes(origin, results, 2)
  t.ok(results.every(Boolean), 'probes pass while the origin is up')
  t.equal(origin.healthy, true)

  const down = untilTransition(origin, false, results)
  pri.healthy = false
  const atDown = await down
  t.equal(trailing(atDown, false), 3, 'the third consecutive failed probe, not earlier, made it unhealthy')
  t.match(await g.waitForLog((l) => l.event === 'origin_health' && l.healthy === false), { origin: 'primary', reason: /3 consecutive failed health checks \(bad status\)/ })

  const up = untilTransition(origin, true, results)
  pri.healthy = true
  const atUp = await up
  t.equal(trailing(atUp, true), 4, 'the fourth consecutive good probe, not earlier, made it healthy')
  t.match(await g.waitForLog((l) => l.event === 'origin_health' && l.healthy === true), { origin: 'primary', reason: '4 consecutive good health checks' })
})

t.test('a failed probe between good ones restarts the count', async (t) => {
  let answers = [true, false, true, false, true, false] // never 2 failures in a row
  const { origin } = await setup(t, { path: '/hc', unhealthyThreshold: 2, healthyThreshold: 1 }, (req, res) => {
    const ok = req.url !== '/hc' || (answers.shift() ?? true)
    json(res, ok ? 200 : 500, {})
  })
  const results: boolean[] = []
  origin.checker.on('probe', (ok) => results.push(ok))
  let transitions = 0
  origin.on('health', () => transitions++)
  await probes(origin, results, 8)
  t.equal(transitions, 0, 'alternating failures never reach the threshold')
  t.ok(results.includes(false))
  answers = [false, false]
  await untilTransition(origin, false, results)
  t.equal(origin.healthy, false)
})

t.test('a probe slower than healthCheck.timeoutMs counts as a failure', async (t) => {
  let slow = false
  const { origin, g } = await setup(t, { path: '/hc', timeoutMs: 100, unhealthyThreshold: 2 }, (req, res) => {
    if (req.url === '/hc' && slow) setTimeout(() => json(res, 200, {}), 400).unref()
    else json(res, 200, {})
  })
  const results: boolean[] = []
  origin.checker.on('probe', (ok) => results.push(ok))
  await probes(origin, results, 1)
  slow = true
  await untilTransition(origin, false, results)
  t.match(await g.waitForLog((l) => l.event === 'origin_health' && l.healthy === false), { reason: /2 consecutive failed health checks/ })
})

t.test('an origin that is killed fails its probes and comes back after revive()', async (t) => {
  const { pri, origin } = await setup(t, { unhealthyThreshold: 2, healthyThreshold: 2 })
  const results: boolean[] = []
  origin.checker.on('probe', (ok) => results.push(ok))
  await probes(origin, results, 1)
  const down = untilTransition(origin, false, results)
  await pri.kill()
  t.equal(trailing(await down, false), 2)
  const up = untilTransition(origin, true, results)
  await pri.revive()
  t.equal(trailing(await up, true), 2)
})

t.test('the checker never probes faster than intervalMs minus its jitter', async (t) => {
  const starts: number[] = []
  const transitions: HealthTransition[] = []
  const checker = new HealthChecker(async () => { starts.push(performance.now()); return true }, { intervalMs: 60, unhealthyThreshold: 2, healthyThreshold: 2 })
  checker.on('transition', (x) => transitions.push(x))
  t.teardown(() => checker.stop())
  // The checker's timers are unref'd (they never hold a gateway open); this one keeps the test alive.
  const keepAlive = setInterval(() => {}, 1000)
  checker.start()
  while (starts.length < 9) await new Promise((resolve) => checker.once('probe', resolve))
  checker.stop()
  clearInterval(keepAlive)
  const gaps = starts.slice(1).map((s, i) => s - starts[i]!)
  // Timers never fire early, so a lower bound holds on any machine.
  t.ok(Math.min(...gaps) >= 60 * 0.9 - 2, `no gap below 90% of the interval (${gaps.map((g) => g.toFixed(1)).join(', ')})`)
  t.equal(transitions.length, 0, 'good probes on a healthy origin emit nothing')

  // markUnhealthy (breaker open) needs healthyThreshold good probes to undo.
  checker.markUnhealthy('test')
  t.equal(checker.healthy, false)
  checker.record(true, 'ok')
  t.equal(checker.healthy, false)
  checker.record(true, 'ok')
  t.equal(checker.healthy, true)
  t.same(transitions.map((x) => x.healthy), [false, true])
})
