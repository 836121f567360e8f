// The demo's edge authentication: its config has the JWT-protected route,
// `npm run demo:token` prints a token, and a token minted with the demo key
// passes a gateway that reads the demo JWKS (served here on a free port,
// since the demo's fixed ports may be taken on a shared machine).
import t from 'tap'
import { request } from 'undici'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { demoConfig, DEMO_SECURE_ROUTE } from '../src/demo/config.js'
import { DEMO_JWKS, DEMO_ISSUER, DEMO_AUDIENCE, mintDemoToken } from '../src/demo/auth.js'
import { startGateway, fastService } from './helpers/gateway.js'
import { startUpstream, json } from './helpers/upstream.js'

t.test('demo token through a gateway reading the demo JWKS', async (t) => {
  const config = demoConfig({})
  t.ok(config.routes.some((r) => r.type === 'proxy' && r.prefix === '/secure/reviews' && r.auth === 'jwt'), 'the demo has a JWT-protected route')
  t.equal(config.auth?.jwt?.issuer, DEMO_ISSUER)

  const jwks = await startUpstream('jwks', (_req, res) => json(res, 200, DEMO_JWKS))
  const review = await startUpstream('review')
  const g = await startGateway({
    auth: { jwt: { jwksUrl: `${jwks.url}/.well-known/jwks.json`, issuer: DEMO_ISSUER, audience: DEMO_AUDIENCE, algorithms: ['ES256'] } },
    services: { review: fastService({ primary: review.url }) },
    routes: [DEMO_SECURE_ROUTE]
  })
  t.teardown(async () => { await g.close(); await jwks.close(); await review.close() })

  const anonymous = await request(`${g.url}/secure/reviews?productId=1`)
  await anonymous.body.dump()
  t.equal(anonymous.statusCode, 401)

  const root = fileURLToPath(new URL('..', import.meta.url))
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/demo/token.ts', 'carol', 'reviews:write'], { cwd: root })
  const printed = stdout.trim()
  t.match(printed, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'demo:token prints a compact JWT')
  for (const token of [printed, await mintDemoToken('carol')]) {
    const res = await request(`${g.url}/secure/reviews?productId=1`, { headers: { authorization: `Bearer ${token}` } })
    await res.body.dump()
    t.equal(res.statusCode, 200, 'a demo token passes')
    t.equal(review.requests.at(-1)?.headers['x-user-id'], 'carol', 'its sub went upstream as x-user-id')
  }
})
