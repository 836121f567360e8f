/**
 * Rollouts with `server.workers: 2` (no fleet): the admin worker drives,
 * the other worker follows its state. Every request opens its own
 * connection, so the cluster spreads them over both workers: with a bad
 * candidate no GET fails on either worker (both shield) and the rollout is
 * rolled back; with a good one, the analyses count the requests both
 * workers sent to the candidate (not only the admin worker's half).
 */
import t from 'tap'
import { get } from 'node:http'
import { request } from 'undici'
import { startUpstream, json } from './helpers/upstream.js'
import { spawnGateway, writeConfig, killAtTeardown, untilHealthy } from './helpers/cli.js'
import { until as untilMet } from './helpers/until.js'

/** Polls `cond` until it gives a value (what, then the condition, as these tests read). */
const until = <T>(what: string, cond: () => T | undefined | Promise<T | undefined>, timeoutMs = 60000): Promise<T> => untilMet(cond, { what, timeoutMs }) as Promise<T>

const TOKEN = 'rollout-workers-token'
// Two real gateway processes start (through tsx) on a machine other test files share: room beyond the file default.
t.setTimeout(240000)

function getOnce (url: string): Promise<number> {
  return new Promise((resolve) => {
    get(url, { agent: false }, (res) => { res.resume().on('end', () => resolve(res.statusCode ?? 0)) }).on('error', () => resolve(0))
  })
}

t.test('workers: 2 — both workers shield and count; the admin worker drives', async (t) => {
  let failing = false
  let n = 0
  let greenSeen = 0
  const blue = await startUpstream('blue', (_req, res) => json(res, 200, { name: 'blue' }))
  const green = await startUpstream('green', (_req, res) => {
    greenSeen++
    if (failing && n++ % 10 < 3) json(res, 503, { name: 'green' })
    else json(res, 200, { name: 'green' })
  })
  t.teardown(async () => { await blue.close(); await green.close() })
  const config = writeConfig(t, `
server: { host: 127.0.0.1, port: 0, workers: 2, shutdownGraceMs: 2000 }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
services:
  app:
    healthCheck: { intervalMs: 100 }
    deployments:
      blue: { primary: ${blue.url} }
      green: { primary: ${green.url} }
    traffic: { blue: 100, green: 0 }
routes:
  - { type: proxy, prefix: /app, service: app }
`)
  const g = spawnGateway(config)
  const { lines, logged } = g
  killAtTeardown(t, g)
  await until('both workers to listen', () => lines.filter((l) => /^worker \d+ listening$/.test(String(l.msg))).length === 2 && logged(/^admin listening on/) !== undefined && logged(/^gateway listening on/) !== undefined ? true : undefined, 120000)
  const gateway = logged(/^gateway listening on (http:\/\/\S+)/)!
  const admin = logged(/^admin listening on (http:\/\/\S+)/)!
  await untilHealthy(admin, 120000)
  const call = async (method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<{ status: number, body: Record<string, unknown> }> => {
    const res = await request(`${admin}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) })
    return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
  }

  /** Runs load until the rollout ends; every status seen. */
  async function rollout (body: Record<string, unknown>): Promise<{ end: Record<string, unknown>, statuses: Map<number, number> }> {
    const statuses = new Map<number, number>()
    let stop = false
    const loops = Array.from({ length: 6 }, async () => {
      for (let k = 0; !stop && k < 100000; k++) {
        const s = await getOnce(`${gateway}/app/1`)
        statuses.set(s, (statuses.get(s) ?? 0) + 1)
      }
    })
    const started = await call('POST', '/admin/services/app/rollouts', { to: 'green', ...body })
    t.equal(started.status, 201, 'started')
    const end = await until('the rollout to end', async () => {
      const r = await call('GET', '/admin/services/app/rollout')
      return r.body.status !== 'running' ? r.body : undefined
    }, 90000)
    stop = true
    await Promise.all(loops)
    return { end, statuses }
  }

  failing = true
  const bad = await rollout({ steps: [50, 100], stepIntervalMs: 1500, analysis: { minRequests: 20 } })
  t.equal(bad.end.status, 'rolled_back', String(bad.end.reason))
  t.match(bad.end.reason, /^error rate 0\.\d+ > 0\.01$/)
  t.same([...bad.statuses.keys()], [200], `no GET failed on either worker: ${JSON.stringify([...bad.statuses])}`)
  // Workers write their access lines in buffered batches: wait for them.
  const pids = (): Set<unknown> => new Set(lines.filter((l) => l.msg === 'request' && typeof l.url === 'string' && l.url.startsWith('/app/')).map((l) => l.pid))
  t.equal((await untilMet(() => pids().size === 2 ? pids() : undefined, { what: 'access lines of both workers', timeoutMs: 30000 })).size, 2, 'both workers served requests')

  failing = false
  await call('PUT', '/admin/services/app/traffic', { blue: 100, green: 0 })
  const before = greenSeen
  const good = await rollout({ steps: [50, 100], stepIntervalMs: 1500, analysis: { minRequests: 20, maxP99Ratio: 50 } })
  t.equal(good.end.status, 'promoted', String(good.end.reason))
  const counted = (good.end.analyses as Array<{ candidate: { requests: number } }>).reduce((a, x) => a + x.candidate.requests, 0)
  const sent = greenSeen - before
  // One worker's counts alone would be about half of what green received.
  t.ok(counted > 0.7 * sent, `the analyses counted ${counted} of the ${sent} requests green received from both workers`)
})
