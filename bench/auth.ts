/**
 * Edge-auth scenario: the cost of verifying a bearer token on every
 * request (SPEC §14), measured in one run against the same gateway process
 * and the same 1 KB upstream —
 *
 *   no auth            a proxy route without auth (the baseline)
 *   jwt RS256          `auth: jwt`, an RS256 token (2048-bit key), keys cached
 *   jwt ES256          `auth: jwt`, an ES256 token, keys cached
 *   RS256 + policy     `auth: { policy }`, 3 statements (an Allow with two
 *                      conditions, an Allow on paths, a Deny on a claim)
 *
 * Every request carries the same token: nothing caches verification, the
 * signature is checked each time (jose, node:crypto). The JWKS is served
 * by this process on loopback and fetched once at start.
 *
 *   npm run bench -- auth [--duration S] [--reps N] [--connections C] [--warmup S]
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { generateKeyPair, exportJWK, SignJWT, type CryptoKey } from 'jose'
import { loadTable, parseBenchArgs, pinning, startGateway, startUpstream, runMatrix, type ChildHandle } from './lib.js'

const BASELINE = 'no auth'
const ISSUER = 'https://issuer.bench/'
const AUDIENCE = 'bench-api'

export async function run (args: string[]): Promise<void> {
  const { common } = parseBenchArgs(args)
  const started: ChildHandle[] = []
  const rs = await generateKeyPair('RS256', { modulusLength: 2048 })
  const es = await generateKeyPair('ES256')
  const keys = [
    { ...(await exportJWK(rs.publicKey)), kid: 'rs', alg: 'RS256', use: 'sig' },
    { ...(await exportJWK(es.publicKey)), kid: 'es', alg: 'ES256', use: 'sig' }
  ]
  const jwks = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ keys }))
  })
  await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', () => resolve()))
  const jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`
  try {
    const upstream = await startUpstream({ name: 'items' })
    started.push(upstream)
    const gw = await startGateway({
      server: { logLevel: 'info' },
      auth: {
        jwt: { jwksUrl, issuer: ISSUER, audience: AUDIENCE, algorithms: ['RS256', 'ES256'] },
        policies: {
          readers: [
            { effect: 'Allow', methods: ['GET', 'HEAD'], condition: { StringEquals: { 'jwt:scope': 'items:read' }, StringLike: { 'request:header/x-tenant': 'acme-*' } } },
            { effect: 'Allow', paths: ['/policy/public/*'] },
            { effect: 'Deny', condition: { StringEquals: { 'jwt:sub': ['banned-1', 'banned-2'] } } }
          ]
        }
      },
      services: { items: { origins: { primary: upstream.url } } },
      routes: [
        { type: 'proxy', prefix: '/none', service: 'items', rewritePrefix: '' },
        { type: 'proxy', prefix: '/rs', service: 'items', rewritePrefix: '', auth: 'jwt', claimHeaders: { sub: 'x-user-id' } },
        { type: 'proxy', prefix: '/es', service: 'items', rewritePrefix: '', auth: 'jwt', claimHeaders: { sub: 'x-user-id' } },
        { type: 'proxy', prefix: '/policy', service: 'items', rewritePrefix: '', auth: { policy: 'readers' }, claimHeaders: { sub: 'x-user-id' } }
      ]
    })
    started.push(gw)
    const rsToken = await token(rs.privateKey, 'RS256', 'rs')
    const esToken = await token(es.privateKey, 'ES256', 'es')
    const headers = (t: string): Record<string, string> => ({ authorization: `Bearer ${t}`, 'x-tenant': 'acme-eu' })
    const targets = [
      { name: BASELINE, url: `${gw.url}/none/items/1`, watch: [gw.pid] },
      { name: 'jwt RS256', url: `${gw.url}/rs/items/1`, headers: headers(rsToken), watch: [gw.pid] },
      { name: 'jwt ES256', url: `${gw.url}/es/items/1`, headers: headers(esToken), watch: [gw.pid] },
      { name: 'RS256 + 3-statement policy', url: `${gw.url}/policy/items/1`, headers: headers(rsToken), watch: [gw.pid] }
    ]
    // One request each first: a refused token must fail loudly, not show up as a fast row of 401s.
    for (const t of targets) {
      const res = await request(t.url, { headers: t.headers })
      await res.body.dump()
      if (res.statusCode !== 200) throw new Error(`${t.name}: ${t.url} answered ${res.statusCode}`)
    }
    const rows = await runMatrix(targets, common, { label: 'auth' })
    const base = rows.find((r) => r.name === BASELINE)!.result.rps
    loadTable(`auth — bearer token verified on every request, 1 KB JSON, ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, {
      baseline: BASELINE,
      notes: [
        pinning.note,
        'one gateway process (compiled dist/, info logging), four proxy routes to the same upstream; the same token on every request, verified each time',
        ...rows.filter((r) => r.name !== BASELINE).map((r) => `goal (cost ≤ 15%, ≥ 0.85× ${BASELINE} req/s): ${r.name} ${(r.result.rps / base).toFixed(2)}× — ${r.result.rps / base >= 0.85 ? 'met' : 'not met'}`)
      ]
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
    jwks.closeAllConnections()
    await new Promise<void>((resolve) => jwks.close(() => resolve()))
  }
}

async function token (key: CryptoKey, alg: string, kid: string): Promise<string> {
  return new SignJWT({ sub: 'bench-user', scope: 'items:read items:list' })
    .setProtectedHeader({ alg, kid })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt()
    .setExpirationTime('2h')
    .sign(key)
}
