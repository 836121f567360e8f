/**
 * The operator console with a fleet (SPEC §10, §15) in a real browser: two
 * replicas sharing a PostgreSQL store; the page on one shows the replicas
 * and a change made on the other within 2 s. See test/helpers/browser.ts
 * for when it is skipped.
 */
import t from 'tap'
import { request } from 'undici'
import { startGateway, type TestGateway } from './helpers/gateway.js'
import { colourUpstream, cutoverService, TOKEN, client } from './helpers/colours.js'
import { startPostgres } from './helpers/postgres.js'
import { until } from './helpers/until.js'
import { guard, launch, recorder, watch, SKIP_WITHOUT_BROWSER } from './helpers/browser.js'

// A browser, a gateway and a dozen page round trips: more than the suite's 60 s per file on a busy machine.
t.setTimeout(240000)
t.teardown(() => client.close())

t.test('with a fleet: the replicas panel, and a change made on another replica shows within 2 s', { skip: SKIP_WITHOUT_BROWSER }, async (t) => {
  const pg = await startPostgres(t)
  const url = await pg.database('console')
  const blue = await colourUpstream('blue')
  const green = await colourUpstream('green')
  t.teardown(async () => { await blue.close(); await green.close() })
  const replica = async (): Promise<TestGateway> => {
    const g = await startGateway({
      admin: { token: TOKEN },
      fleet: { url, name: 'console', heartbeatMs: 100, applyTimeoutMs: 5000 },
      services: { review: cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic: { blue: 100, green: 0 } }) },
      routes: [{ type: 'proxy', prefix: '/reviews', service: 'review' }]
    })
    t.teardown(() => g.close())
    return g
  }
  const a = await replica()
  const b = await replica()
  await until(() => a.gw.control.fleet?.connected === true && b.gw.control.fleet?.connected === true ? true : undefined, { what: 'both replicas connected' })
  await until(async () => (await a.gw.control.fleet!.liveReplicas()).length === 2 ? true : undefined, { what: 'both replicas live' })

  const browser = await launch(t)
  if (browser === null) return
  const rec = recorder()
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  await guard(context, rec)
  const page = await context.newPage()
  // The only answers provoked: a service without a rollout (404).
  watch(page, rec, [/^\/admin\/services\/[^/]+\/rollout$/])
  await page.goto(`${a.adminUrl}/ui/`)
  await page.getByLabel('Admin token').fill(TOKEN)
  await page.getByRole('button', { name: 'Sign in' }).click()

  const fleet = page.locator('section.fleet')
  await fleet.getByRole('heading', { level: 2, name: 'Fleet console' }).waitFor()
  await fleet.locator('tbody tr').nth(1).waitFor()
  const rows = await fleet.locator('tbody tr').allTextContents()
  t.equal(rows.length, 2, 'one row per replica')
  t.ok(rows.some((r) => r.includes(a.gw.control.replicaId) && r.includes('(this one)')), 'the replica this page talks to is marked')
  t.ok(rows.some((r) => r.includes(b.gw.control.replicaId)), 'the other replica is listed')
  t.ok(rows.every((r) => r.includes('live')), 'both live')
  await fleet.getByText('store connected').waitFor()
  await page.getByRole('heading', { level: 2, name: 'review' }).waitFor()

  // A change made on replica B is committed to the store, applied on A and shown by A's page.
  const res = await request(`${b.adminUrl}/admin/services/review/traffic`, {
    method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ blue: 40, green: 60 }), dispatcher: client
  })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  const answered = Date.now()
  await page.locator('section[data-service="review"] td.weight[data-deployment="green"]').filter({ hasText: /^60$/ }).waitFor({ timeout: 2000 })
  t.comment(`a change on another replica visible in the page after ${Date.now() - answered} ms`)
  await page.locator('section[data-service="review"] .history td').filter({ hasText: b.gw.control.replicaId }).first().waitFor({ timeout: 2000 })
  t.pass('the history names the replica that made the change')
  t.same(rec.foreign, [], 'every request went to 127.0.0.1')
  t.same(rec.consoleErrors, [], 'no console or page error')
})
