/**
 * Rollouts (SPEC §11) on one gateway against real blue and green upstreams
 * under steady client traffic: a healthy candidate is promoted through
 * every step; a candidate failing 30 % is rolled back at its first analysis
 * with a reason naming the check and the numbers, while the shield keeps
 * every failed GET from clients (its failed POSTs are visible); a slow
 * candidate fails the p99 check; a step without enough requests fails
 * after waiting; pause/resume/promote/abort and every conflict.
 * Intervals are short and taken from the start request; verdicts rest on
 * outcomes (statuses, counts, reasons), never on elapsed time.
 */
import t from 'tap'
import { request } from 'undici'
import { startGateway, type TestGateway } from './helpers/gateway.js'
import { TOKEN, client, cutoverConfig, cutoverService, putTraffic, sample, scrape } from './helpers/colours.js'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'

t.teardown(() => client.close())

interface Teardown { teardown(fn: () => unknown): void }

/** green fails `failIn10` of every 10 requests (503) and answers after `delayMs`. */
async function setup (t: Teardown, green: { failIn10?: number, delayMs?: number } = {}, extra: Record<string, unknown> = {}) {
  const blue = await startUpstream('blue', (_req, res) => json(res, 200, { colour: 'blue' }))
  // A count per method: the first requests of each method fail, then 3 of every 10.
  const n = new Map<string, number>()
  const greenUp = await startUpstream('green', (req, res) => {
    const k = n.get(req.method ?? '') ?? 0
    n.set(req.method ?? '', k + 1)
    const fail = (k % 10) < (green.failIn10 ?? 0)
    const answer = (): void => fail ? json(res, 503, { colour: 'green', failed: true }) : json(res, 200, { colour: 'green' })
    if ((green.delayMs ?? 0) > 0) setTimeout(answer, green.delayMs)
    else answer()
  })
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: greenUp.url } }, { traffic: { blue: 100, green: 0 }, ...extra })))
  t.teardown(async () => { await g.close(); await blue.close(); await greenUp.close() })
  return { g, blue, green: greenUp }
}

async function admin (g: TestGateway, method: 'GET' | 'POST', path: string, body?: unknown, auth = true): Promise<{ status: number, body: Record<string, unknown> }> {
  const headers: Record<string, string> = {}
  if (auth) headers.authorization = `Bearer ${TOKEN}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await request(`${g.adminUrl}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), dispatcher: client })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

const start = (g: TestGateway, body: unknown): ReturnType<typeof admin> => admin(g, 'POST', '/admin/services/review/rollouts', body)

/** Client traffic until stopped: GETs and (optionally) POSTs, every status seen. */
function traffic (g: TestGateway, opts: { posts?: boolean, concurrency?: number } = {}) {
  const seen = { get: new Map<number, number>(), post: new Map<number, number>(), colours: new Map<string, number>() }
  let stop = false
  const bump = (m: Map<number | string, number>, k: number | string): void => { m.set(k, (m.get(k) ?? 0) + 1) }
  const loop = async (i: number): Promise<void> => {
    for (let k = 0; !stop && k < 200000; k++) {
      const post = opts.posts === true && (k + i) % 4 === 0
      try {
        const res = await request(`${g.url}/reviews/1`, { method: post ? 'POST' : 'GET', body: post ? '{"stars":5}' : undefined, headers: post ? { 'content-type': 'application/json' } : {}, dispatcher: client })
        const body = await res.body.json() as { colour?: string }
        bump(post ? seen.post : seen.get, res.statusCode)
        if (body.colour !== undefined) bump(seen.colours, body.colour)
      } catch {
        bump(post ? seen.post : seen.get, 0)
      }
    }
  }
  const running = Promise.all(Array.from({ length: opts.concurrency ?? 4 }, (_, i) => loop(i)))
  return {
    seen,
    async stop () { stop = true; await running }
  }
}

const ended = (g: TestGateway, timeoutMs = 60000) => g.waitForLog((l) => l.event === 'rollout' && l.action === 'decision' && ['promoted', 'rolled_back', 'aborted'].includes(l.status as string), timeoutMs)
const failedOf = (m: Map<number, number>): number => [...m].filter(([s]) => s === 0 || s >= 500).reduce((a, [, n]) => a + n, 0)

t.test('a healthy candidate is promoted through every step, each change versioned in the history with source rollout', async (t) => {
  const { g } = await setup(t)
  const load = traffic(g)
  const res = await start(g, { to: 'green', steps: [20, 50, 100], stepIntervalMs: 1000, analysis: { minRequests: 10, maxP99Ratio: 50 } })
  t.equal(res.status, 201, 'started: 201')
  t.match(res.body, { service: 'review', from: 'blue', to: 'green', status: 'running', step: 0, weight: 20, steps: [20, 50, 100], driver: g.gw.control.replicaId })
  t.match(res.body.analysis, { minRequests: 10, maxErrorRate: 0.01, maxP99Ratio: 50 }, 'analysis overrides merged key by key over the defaults')
  const end = await ended(g)
  await load.stop()
  t.equal(end.status, 'promoted', `ended promoted: ${String(end.msg)}`)
  const state = (await admin(g, 'GET', '/admin/services/review/rollout')).body
  t.match(state, { status: 'promoted', step: 2, weight: 100 })
  const analyses = state.analyses as Array<{ step: number, passed: boolean, candidate: { requests: number }, baseline: { requests: number }, reason: string }>
  t.same(analyses.map((a) => [a.step, a.passed]), [[0, true], [1, true], [2, true]], 'every step analysed once and passed, the last one too')
  t.ok(analyses.every((a) => a.candidate.requests >= 10), 'each analysis had at least minRequests candidate requests')
  t.match(analyses[2]!.reason, /p99 ratio not judged \(baseline had \d+ requests, fewer than minRequests\)/, 'at weight 100 the baseline has (next to) no requests: the ratio is not judged')
  t.match(analyses[0]!.reason, /^error rate 0 <= 0\.01; p99 ratio [\d.]+ <= 50/, 'the reason gives the numbers')
  const services = (await admin(g, 'GET', '/admin/services/review')).body
  t.same(services.traffic, { blue: 0, green: 100 }, 'green has all traffic')
  const history = (await admin(g, 'GET', '/admin/services/review/history')).body as unknown as Array<{ version: number, source: string, to: Record<string, number>, reason: string }>
  t.same(history.map((h) => [h.source, h.to.green]), [['rollout', 100], ['rollout', 50], ['rollout', 20]], 'three versioned changes, newest first, all by the rollout')
  t.same(history.map((h) => h.version), [4, 3, 2], 'each change took the next version')
  t.match(history[2]!.reason, /step 1\/3: green at 20/)
  t.ok(g.logs.filter((l) => l.event === 'rollout' && l.action === 'step').length === 3, 'a log line per step')
  t.ok(g.logs.some((l) => l.event === 'rollout' && l.action === 'analysis' && typeof (l.analysis as { candidate?: { requests?: unknown } }).candidate?.requests === 'number'), 'analysis lines carry the numbers')
  t.equal(sample(await scrape(g.adminUrl), 'gateway_rollouts_total', { service: 'review', result: 'promoted' }), 1)
  t.equal(failedOf(load.seen.get), 0, 'no client request failed')
  t.ok((load.seen.colours.get('green') ?? 0) > 0 && (load.seen.colours.get('blue') ?? 0) > 0, 'both deployments served during the rollout')
})

t.test('a candidate failing 30 % is rolled back at its first analysis; with the shield no GET fails for a client, its POSTs do', async (t) => {
  const { g } = await setup(t, { failIn10: 3 })
  const load = traffic(g, { posts: true })
  const res = await start(g, { to: 'green', steps: [50, 100], stepIntervalMs: 1500, analysis: { minRequests: 10 } })
  t.equal(res.status, 201)
  const end = await ended(g)
  await load.stop()
  t.equal(end.status, 'rolled_back', String(end.msg))
  const state = (await admin(g, 'GET', '/admin/services/review/rollout')).body
  t.match(state, { status: 'rolled_back', step: 0, weight: 0 }, 'rolled back from the first step: within about two intervals of the start')
  t.match(state.reason, /^error rate 0\.\d+ > 0\.01$/, `the reason names the check, value and threshold: ${String(state.reason)}`)
  const a = (state.analyses as Array<{ passed: boolean, candidate: { requests: number, failures: number, errorRate: number } }>)
  t.equal(a.length, 1, 'one analysis decided it')
  t.ok(a[0]!.candidate.errorRate >= 0.2, `the candidate's measured error rate is far above the threshold: ${a[0]!.candidate.errorRate}`)
  t.same((await admin(g, 'GET', '/admin/services/review')).body.traffic, { blue: 100, green: 0 }, 'baseline back at 100, candidate at 0')
  const history = (await admin(g, 'GET', '/admin/services/review/history')).body as unknown as Array<{ source: string, reason: string }>
  t.match(history[0], { source: 'rollout', reason: /rolled back: error rate 0\.\d+ > 0\.01/ })
  t.equal(failedOf(load.seen.get), 0, `no GET failed for a client (GET statuses: ${JSON.stringify([...load.seen.get])})`)
  t.ok(failedOf(load.seen.post) > 0, `failed POSTs are visible (POST statuses: ${JSON.stringify([...load.seen.post])})`)
  const text = await scrape(g.adminUrl)
  t.ok(sample(text, 'gateway_rollout_shielded_total', { service: 'review' })! > 0, 'shielded requests are counted')
  t.equal(sample(text, 'gateway_rollouts_total', { service: 'review', result: 'rolled_back' }), 1)
  t.ok(g.logs.some((l) => l.event === 'rollout' && l.action === 'decision' && l.status === 'rolled_back' && /rolled back: error rate/.test(String(l.msg))), 'the decision is logged with its reason')
})

t.test('with shield off the failed GETs reach clients', async (t) => {
  const { g } = await setup(t, { failIn10: 3 })
  const load = traffic(g)
  t.equal((await start(g, { to: 'green', steps: [50, 100], stepIntervalMs: 1000, analysis: { minRequests: 10 }, shield: false })).status, 201)
  const end = await ended(g)
  await load.stop()
  t.equal(end.status, 'rolled_back')
  t.ok(failedOf(load.seen.get) > 0, `GETs failed for clients without the shield: ${JSON.stringify([...load.seen.get])}`)
})

t.test('a slow candidate fails the p99 check', async (t) => {
  const { g } = await setup(t, { delayMs: 250 })
  const load = traffic(g, { concurrency: 8 })
  t.equal((await start(g, { to: 'green', steps: [50, 100], stepIntervalMs: 1500, analysis: { minRequests: 10 } })).status, 201)
  const end = await ended(g)
  await load.stop()
  t.equal(end.status, 'rolled_back')
  const state = (await admin(g, 'GET', '/admin/services/review/rollout')).body
  t.match(state.reason, /^p99 ratio [\d.]+ > 1\.5 \(candidate [\d.]+ ms, baseline [\d.]+ ms\)$/, String(state.reason))
})

t.test('a step without enough candidate requests waits 3 more intervals, then fails', async (t) => {
  const { g } = await setup(t)
  t.equal((await start(g, { to: 'green', steps: [50, 100], stepIntervalMs: 50, analysis: { minRequests: 1000 } })).status, 201)
  const end = await ended(g)
  t.equal(end.status, 'rolled_back')
  const state = (await admin(g, 'GET', '/admin/services/review/rollout')).body
  t.match(state.reason, /^candidate requests 0 < 1000 \(minRequests\) after 3 extra intervals$/)
  t.ok(g.logs.filter((l) => l.event === 'rollout' && l.action === 'wait').length >= 1, 'the waits are logged')
})

t.test('pause, resume, promote, abort; 400, 404 and 409 as specified; PUT traffic refused while active', async (t) => {
  const { g } = await setup(t, {}, {})
  const path = '/admin/services/review/rollout'
  t.equal((await admin(g, 'GET', path)).body.code, 'GW_NO_ROLLOUT', 'no rollout yet: 404 GW_NO_ROLLOUT')
  t.equal((await admin(g, 'GET', path)).status, 404)
  t.equal((await admin(g, 'GET', '/admin/services/nope/rollout')).body.code, 'GW_NOT_FOUND', 'unknown service: GW_NOT_FOUND')
  t.equal((await admin(g, 'GET', path, undefined, false)).status, 401, 'the admin token is required')
  t.equal((await admin(g, 'POST', `${path}/pause`)).status, 404, 'pause with no rollout: 404')

  const bad = [
    [{ to: 'purple' }, /"to" must name a deployment/],
    [{}, /"to" must name a deployment/],
    [{ to: 'blue' }, /is the baseline/],
    [{ to: 'green', steps: [50, 20, 100] }, /steps\[1\]: steps must increase/],
    [{ to: 'green', analysis: { maxErrorRate: 2 } }, /analysis\.maxErrorRate/],
    [{ to: 'green', stepIntervalMs: 'soon' }, /stepIntervalMs/],
    [{ to: 'green', surprise: 1 }, /surprise/]
  ] as const
  for (const [body, re] of bad) {
    const r = await start(g, body)
    t.equal(r.status, 400, `400 for ${JSON.stringify(body)}`)
    t.match(r.body, { code: 'GW_BAD_REQUEST', message: re })
  }

  const r = await start(g, { to: 'green', steps: [10, 100], stepIntervalMs: 600000 })
  t.equal(r.status, 201)
  t.match(r.body, { status: 'running', weight: 10, failureLimit: 1, shield: true })
  t.same((await admin(g, 'GET', '/admin/services/review')).body.traffic, { blue: 90, green: 10 }, 'weights went to the first step at once')
  const again = await start(g, { to: 'green' })
  t.match(again, { status: 409, body: { code: 'GW_CONFLICT' } }, 'a second rollout while one runs: 409')
  const put = await putTraffic(g.adminUrl, { blue: 0, green: 100 })
  t.match(put, { status: 409, body: { code: 'GW_CONFLICT' } }, 'PUT traffic while running: 409')
  t.match(await admin(g, 'POST', `${path}/resume`), { status: 409, body: { code: 'GW_CONFLICT' } }, 'resume while running: 409')

  t.match(await admin(g, 'POST', `${path}/pause`), { status: 200, body: { status: 'paused', weight: 10 } })
  t.match(await admin(g, 'POST', `${path}/pause`), { status: 409 }, 'pause while paused: 409')
  t.match(await putTraffic(g.adminUrl, { blue: 100, green: 0 }), { status: 409 }, 'PUT traffic while paused: 409')
  t.match(await start(g, { to: 'green' }), { status: 409 }, 'a new rollout while paused: 409')
  t.match(await admin(g, 'POST', `${path}/resume`), { status: 200, body: { status: 'running' } })

  t.match(await admin(g, 'POST', `${path}/promote`), { status: 200, body: { status: 'promoted', weight: 100 } })
  t.same((await admin(g, 'GET', '/admin/services/review')).body.traffic, { blue: 0, green: 100 }, 'promote: candidate at 100 now')
  for (const action of ['pause', 'resume', 'promote', 'abort']) {
    t.match(await admin(g, 'POST', `${path}/${action}`), { status: 409, body: { code: 'GW_CONFLICT' } }, `${action} after the end: 409`)
  }

  // Green is the baseline now: roll blue out, pause, then abort it.
  t.match(await start(g, { to: 'blue', steps: [50, 100], stepIntervalMs: 600000 }), { status: 201, body: { from: 'green', to: 'blue', weight: 50 } })
  t.match(await admin(g, 'POST', `${path}/pause`), { status: 200 })
  t.match(await admin(g, 'POST', `${path}/abort`), { status: 200, body: { status: 'aborted', weight: 0 } }, 'abort from paused')
  t.same((await admin(g, 'GET', '/admin/services/review')).body.traffic, { blue: 0, green: 100 }, 'abort: the baseline back at 100')
  t.match(await admin(g, 'GET', path), { status: 200, body: { status: 'aborted', to: 'blue' } }, 'GET shows the last rollout')
  t.match(await putTraffic(g.adminUrl, { blue: 100, green: 0 }), { status: 200 }, 'PUT traffic works again once it ended')

  const text = await scrape(g.adminUrl)
  t.equal(sample(text, 'gateway_rollouts_total', { service: 'review', result: 'promoted' }), 1)
  t.equal(sample(text, 'gateway_rollouts_total', { service: 'review', result: 'aborted' }), 1)
  const history = (await admin(g, 'GET', '/admin/services/review/history')).body as unknown as Array<{ source: string, reason: string }>
  t.same(history.map((h) => h.source), ['admin', 'rollout', 'rollout', 'rollout', 'rollout'], 'the rollout\'s changes and the operator\'s, in order')
})
