/**
 * Preview routing (SPEC §11): the preview header naming a deployment sends
 * the request there whatever its weight, on proxy routes and aggregate
 * sections; with `preview.token` only when `x-preview-token` matches (else
 * the header is ignored); neither header reaches the upstream.
 */
import t from 'tap'
import { request } from 'undici'
import { startGateway } from './helpers/gateway.js'
import { client, cutoverService, pool } from './helpers/colours.js'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'

t.teardown(() => client.close())

/** Answers its colour and the headers it got. */
const colour = (name: string): Promise<TestUpstream> => startUpstream(name, (req, res) => json(res, 200, { colour: name, headers: req.headers }))

async function gateway (t: { teardown(fn: () => unknown): void }, preview: Record<string, unknown>) {
  const blue = await colour('blue')
  const green = await colour('green')
  const g = await startGateway({
    services: { review: cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic: { blue: 100, green: 0 }, preview }) },
    routes: [
      { type: 'proxy', prefix: '/reviews', service: 'review' },
      { type: 'aggregate', path: '/agg/:id', sections: { review: { service: 'review', path: '/reviews/{id}', required: true } }, forwardHeaders: [] }
    ]
  })
  t.teardown(async () => { await g.close(); await blue.close(); await green.close() })
  return { g, blue, green }
}

async function get (url: string, headers: Record<string, string>): Promise<{ colour: string, headers: Record<string, string> }> {
  const res = await request(url, { headers, dispatcher: client })
  const body = await res.body.json() as { colour?: string, headers?: Record<string, string>, review?: { colour: string, headers: Record<string, string> } }
  if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`)
  return body.review ?? body as { colour: string, headers: Record<string, string> }
}

t.test('without a token: the header reaches the named deployment at weight 0, on proxy and aggregate, and is not sent upstream', async (t) => {
  const { g } = await gateway(t, { header: 'x-preview-deployment' })
  const h = { 'x-preview-deployment': 'green', 'x-preview-token': 'anything' }
  const proxied = await pool(20, 4, () => get(`${g.url}/reviews/1`, h))
  t.ok(proxied.every((a) => a.colour === 'green'), 'every proxied preview request went to green (weight 0)')
  t.notOk('x-preview-deployment' in proxied[0]!.headers, 'the preview header is not sent upstream')
  t.notOk('x-preview-token' in proxied[0]!.headers, 'the token header is not sent upstream')
  const sections = await pool(20, 4, () => get(`${g.url}/agg/1`, h))
  t.ok(sections.every((a) => a.colour === 'green'), 'every aggregate section went to green')
  const plain = await pool(20, 4, () => get(`${g.url}/reviews/1`, {}))
  t.ok(plain.every((a) => a.colour === 'blue'), 'requests without the header follow the weights')
  const unknown = await get(`${g.url}/reviews/1`, { 'x-preview-deployment': 'purple' })
  t.equal(unknown.colour, 'blue', 'an unknown deployment name is ignored')
})

t.test('with a token: only the matching x-preview-token opens the preview; otherwise the header is ignored', async (t) => {
  const { g } = await gateway(t, { header: 'X-Canary', token: 's3cret' })
  t.equal((await get(`${g.url}/reviews/1`, { 'x-canary': 'green', 'x-preview-token': 's3cret' })).colour, 'green', 'right token: green')
  t.equal((await get(`${g.url}/agg/1`, { 'x-canary': 'green', 'x-preview-token': 's3cret' })).colour, 'green', 'right token, aggregate section: green')
  const wrong = await get(`${g.url}/reviews/1`, { 'x-canary': 'green', 'x-preview-token': 'guess' })
  t.equal(wrong.colour, 'blue', 'wrong token: the header is ignored')
  t.notOk('x-canary' in wrong.headers, 'even an ignored preview header is not sent upstream')
  t.equal((await get(`${g.url}/reviews/1`, { 'x-canary': 'green' })).colour, 'blue', 'no token: the header is ignored')
})

t.test('a token configured empty (an unset variable) opens nothing', async (t) => {
  const { g } = await gateway(t, { token: '' })
  t.equal((await get(`${g.url}/reviews/1`, { 'x-preview-deployment': 'green', 'x-preview-token': '' })).colour, 'blue')
})
