// Route policies through real requests (SPEC §14): the SPEC's own example
// policy on a proxy route behind a real JWKS — allowed, explicitly denied
// (a Deny beats the matching Allow), implicitly denied — each refusal a 403
// GW_FORBIDDEN that never reaches the upstream; gateway_auth_total counts
// every result.
import t from 'tap'
import { request } from 'undici'
import { startGateway, fastService } from './helpers/gateway.js'
import { startUpstream } from './helpers/upstream.js'
import { startIssuer, jwtConfig } from './helpers/jwks.js'

t.test('allow, explicit deny, implicit deny', async (t) => {
  const issuer = await startIssuer()
  const up = await startUpstream('review')
  const g = await startGateway({
    auth: {
      jwt: jwtConfig(issuer),
      policies: {
        'review-writers': [
          { effect: 'Allow', methods: ['POST', 'PUT'], condition: { StringEquals: { 'jwt:scope': 'reviews:write' }, StringLike: { 'request:header/x-tenant': 'acme-*' } } },
          { effect: 'Allow', methods: ['GET'], paths: ['/admin-api/reviews/public/*'] },
          { effect: 'Deny', condition: { StringEquals: { 'jwt:sub': 'banned-user' } } }
        ]
      }
    },
    services: { review: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/admin-api/reviews', service: 'review', auth: { policy: 'review-writers' } }]
  })
  t.teardown(async () => { await g.close(); await up.close(); await issuer.close() })

  const call = async (method: 'GET' | 'POST' | 'PUT', path: string, claims: Record<string, unknown>, headers: Record<string, string> = {}): Promise<{ status: number, code: unknown }> => {
    const res = await request(`${g.url}${path}`, { method, headers: { authorization: `Bearer ${await issuer.token(claims)}`, ...headers }, body: method === 'GET' ? undefined : '{}' })
    const body = JSON.parse((await res.body.text()) || '{}') as { code?: unknown }
    return { status: res.statusCode, code: body.code }
  }
  const writer = { sub: 'carol', scope: 'reviews:read reviews:write' }
  const acme = { 'x-tenant': 'acme-eu' }

  t.equal((await call('POST', '/admin-api/reviews/1', writer, acme)).status, 200, 'writer scope, acme tenant, POST')
  t.equal((await call('PUT', '/admin-api/reviews/1', writer, acme)).status, 200, 'PUT')
  t.equal((await call('GET', '/admin-api/reviews/public/1', { sub: 'dave' })).status, 200, 'the second Allow: GET under public/')
  const forwarded = up.requests.length
  t.same(await call('POST', '/admin-api/reviews/1', { ...writer, sub: 'banned-user' }, acme), { status: 403, code: 'GW_FORBIDDEN' }, 'explicit Deny beats the matching Allow')
  t.same(await call('GET', '/admin-api/reviews/1', writer, acme), { status: 403, code: 'GW_FORBIDDEN' }, 'implicit deny: no statement allows GET here')
  t.same(await call('POST', '/admin-api/reviews/1', { sub: 'carol', scope: 'reviews:read' }, acme), { status: 403, code: 'GW_FORBIDDEN' }, 'implicit deny: scope lacks reviews:write')
  t.same(await call('POST', '/admin-api/reviews/1', writer, { 'x-tenant': 'globex' }), { status: 403, code: 'GW_FORBIDDEN' }, 'implicit deny: another tenant')
  t.same(await call('POST', '/admin-api/reviews/1', writer), { status: 403, code: 'GW_FORBIDDEN' }, 'implicit deny: no tenant header')
  t.equal(up.requests.length, forwarded, 'no denied request reached the upstream')
  const anonymous = await request(`${g.url}/admin-api/reviews/1`, { method: 'POST', body: '{}' })
  await anonymous.body.dump()
  t.equal(anonymous.statusCode, 401, 'no token: 401 before the policy is looked at')

  const metrics = await (await request(`${g.adminUrl}/metrics`)).body.text()
  const count = (result: string): number => Number(new RegExp(`^gateway_auth_total\\{route="/admin-api/reviews",result="${result}"\\} (\\d+)$`, 'm').exec(metrics)?.[1])
  t.equal(count('ok'), 3, 'gateway_auth_total ok')
  t.equal(count('forbidden'), 5, 'gateway_auth_total forbidden')
  t.equal(count('unauthenticated'), 1, 'gateway_auth_total unauthenticated')
  t.equal(count('unavailable'), 0, 'gateway_auth_total unavailable, shown at 0')
})
