/**
 * Live cutover: weights shifted through the admin API under load fail no
 * request and apply from the next request on; a weight-0 deployment keeps
 * its health checks; `/readyz` follows the deployments that have traffic;
 * a deployment's primary/secondary failover still works inside a cutover.
 */
import t from 'tap'
import { request } from 'undici'
import { startGateway } from './helpers/gateway.js'
import { binomialRange, client, colourOf, colourUpstream, cutoverConfig, cutoverService, pool, putTraffic, sample, scrape } from './helpers/colours.js'
import { until } from './helpers/until.js'

t.teardown(() => client.close())

interface Teardown { teardown(fn: () => unknown): void }

async function readyz (adminUrl: string): Promise<{ status: number, body: { status: string, failing?: string[] } }> {
  const res = await request(`${adminUrl}/readyz`, { dispatcher: client })
  return { status: res.statusCode, body: await res.body.json() as { status: string, failing?: string[] } }
}


t.test('zero failed requests while weights go 100/0 -> 50/50 -> 0/100 -> 100/0 under closed-loop load', async (t) => {
  // A little latency keeps requests in flight while the weights change.
  const blue = await colourUpstream('blue', 2)
  const green = await colourUpstream('green', 2)
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic: { blue: 100, green: 0 } })))
  t.teardown(async () => { await g.close(); await blue.close(); await green.close() })

  const phases = [{ blue: 100, green: 0 }, { blue: 50, green: 50 }, { blue: 0, green: 100 }, { blue: 100, green: 0 }]
  const perPhase = 300
  // `settled`: the index of the phase whose PUT has been answered and no
  // next PUT has been sent; -1 while a PUT is in flight.
  let settled = 0
  let stop = false
  const done: Array<{ phase: number, status: number, colour: string | null, error?: string }> = []
  const counts = phases.map(() => 0)
  const worker = async (): Promise<void> => {
    while (!stop) {
      const startedIn = settled
      let status = 0
      let colour: string | null = null
      let error: string | undefined
      try {
        ({ status, colour } = await colourOf(g.url, {}))
      } catch (err) {
        error = (err as Error).message
      }
      // Strictly inside one phase: started and finished with no PUT in between.
      const phase = startedIn === settled ? startedIn : -1
      done.push(error === undefined ? { phase, status, colour } : { phase, status, colour, error })
      if (phase >= 0) counts[phase]!++
    }
  }
  const workers = Array.from({ length: 16 }, worker)
  for (let i = 0; i < phases.length; i++) {
    if (i > 0) {
      settled = -1
      const res = await putTraffic(g.adminUrl, phases[i])
      t.equal(res.status, 200, `PUT ${JSON.stringify(phases[i])}`)
      settled = i
    }
    t.ok(await until(() => counts[i]! >= perPhase), `phase ${i} served ${perPhase} requests`)
  }
  stop = true
  await Promise.all(workers)

  const failed = done.filter((d) => d.status !== 200)
  t.same(failed.slice(0, 5), [], `no failed request out of ${done.length} (including ${done.filter((d) => d.phase === -1).length} that crossed a shift)`)
  const share = (i: number): { n: number, green: number } => {
    const inPhase = done.filter((d) => d.phase === i)
    return { n: inPhase.length, green: inPhase.filter((d) => d.colour === 'green').length }
  }
  t.equal(share(0).green, 0, '100/0: every request blue')
  const half = share(1)
  const [lo, hi] = binomialRange(half.n, 0.5)
  t.ok(half.green >= lo && half.green <= hi, `50/50: green served ${half.green}/${half.n}, accepted [${lo}, ${hi}]`)
  t.equal(share(2).green, share(2).n, '0/100: every request green')
  t.equal(share(3).green, 0, 'back to 100/0: every request blue')
  t.equal(g.logs.filter((l) => l.event === 'traffic').length, 3, 'three changes logged')
})

t.test('a weight-0 deployment keeps its health checks; /readyz follows the deployments with traffic', async (t) => {
  const blue = await colourUpstream('blue')
  const greenP = await colourUpstream('green-primary')
  const greenS = await colourUpstream('green-secondary')
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: greenP.url, secondary: greenS.url } }, { traffic: { blue: 100, green: 0 } })))
  t.teardown(async () => { await g.close(); await blue.close(); await greenP.close(); await greenS.close() })

  t.ok(await until(async () => (await readyz(g.adminUrl)).status === 200), 'ready at start')
  const probes = greenP.probes
  t.ok(await until(() => greenP.probes >= probes + 3), 'the weight-0 green primary is still probed')

  // Green (weight 0) loses every origin: readiness does not care.
  greenP.healthy = false
  greenS.healthy = false
  await g.waitForLog((l) => l.event === 'origin_health' && l.deployment === 'green' && l.origin === 'primary' && l.healthy === false)
  await g.waitForLog((l) => l.event === 'origin_health' && l.deployment === 'green' && l.origin === 'secondary' && l.healthy === false)
  t.ok(await until(async () => (await readyz(g.adminUrl)).status === 200), 'an unhealthy weight-0 deployment does not make the gateway unready')

  // Now green gets the traffic: no healthy origin with weight > 0.
  t.equal((await putTraffic(g.adminUrl, { blue: 0, green: 100 })).status, 200)
  const down = await readyz(g.adminUrl)
  t.equal(down.status, 503, 'green has all traffic and no healthy origin: 503')
  t.same(down.body.failing, ['review'], 'the failing service is named')

  // One green origin recovers (found by the health checks that kept running).
  greenS.healthy = true
  await g.waitForLog((l) => l.event === 'origin_health' && l.deployment === 'green' && l.origin === 'secondary' && l.healthy === true)
  t.ok(await until(async () => (await readyz(g.adminUrl)).status === 200), 'a healthy green secondary is enough')

  // It fails again; shifting weight back to blue makes the gateway ready at once.
  greenS.healthy = false
  t.ok(await until(async () => (await readyz(g.adminUrl)).status === 503), 'green down again: 503')
  t.equal((await putTraffic(g.adminUrl, { blue: 100, green: 0 })).status, 200)
  t.ok(await until(async () => (await readyz(g.adminUrl)).status === 200), 'rollback to the healthy blue: ready again')

  // Split traffic: ready while any deployment with weight > 0 has a healthy origin.
  t.equal((await putTraffic(g.adminUrl, { blue: 50, green: 50 })).status, 200)
  t.ok(await until(async () => (await readyz(g.adminUrl)).status === 200), '50/50 with blue healthy: ready')
})

t.test('inside a cutover, a deployment still fails over: green primary dead -> green secondary answers', async (t) => {
  const blue = await colourUpstream('blue')
  const greenP = await colourUpstream('green-primary')
  const greenS = await colourUpstream('green-secondary')
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: greenP.url, secondary: greenS.url } }, { traffic: { blue: 100, green: 0 } })))
  t.teardown(async () => { await g.close(); await blue.close(); await greenP.close(); await greenS.close() })

  t.equal((await putTraffic(g.adminUrl, { blue: 0, green: 100 })).status, 200)
  const before = await pool(20, 4, () => colourOf(g.url))
  t.ok(before.every((a) => a.colour === 'green-primary'), 'green primary serves after the cutover')

  await greenP.kill()
  // Before the health checks notice, each request is retried on the secondary at once.
  const during = await pool(40, 8, () => colourOf(g.url))
  t.same(during.filter((a) => a.status !== 200), [], 'no failed request while the green primary is dead')
  t.ok(during.every((a) => a.colour === 'green-secondary'), 'the green secondary answers, never blue')
  const sw = await g.waitForLog((l) => l.event === 'failover' && l.kind === 'switch' && l.deployment === 'green')
  t.equal(sw.to, 'secondary', 'the stateful switch inside green is logged')
  const after = await pool(20, 4, () => colourOf(g.url))
  t.ok(after.every((a) => a.colour === 'green-secondary'), 'after the switch every request goes to the green secondary')
  t.equal(blue.requests.length, 0, 'blue (weight 0) got no traffic')

  const text = await scrape(g.adminUrl)
  t.ok((sample(text, 'gateway_failovers_total', { service: 'review', deployment: 'green', kind: 'switch' }) ?? 0) >= 1, 'the switch is counted with deployment="green"')
  t.equal(sample(text, 'gateway_failovers_total', { service: 'review', deployment: 'blue', kind: 'switch' }), 0, 'nothing counted on blue')

  // Rollback still works while green is degraded.
  t.equal((await putTraffic(g.adminUrl, { blue: 100, green: 0 })).status, 200)
  const rolled = await pool(20, 4, () => colourOf(g.url))
  t.ok(rolled.every((a) => a.colour === 'blue'), 'rollback sends everything to blue')
})
