/**
 * A token issuer for tests: real key pairs made by jose, their public halves
 * served as a JWKS by a real HTTP server on 127.0.0.1 (test/helpers/upstream.ts,
 * so it can be killed and revived on the same port), and tokens signed with
 * jose's SignJWT. Keys can be added and removed while the server runs.
 */
import { generateKeyPair, exportJWK, SignJWT, type CryptoKey, type JWK } from 'jose'
import { startUpstream, json, deadPort, type TestUpstream } from './upstream.js'

export const ISSUER = 'https://issuer.test/'
export const AUDIENCE = 'lattice-api'

interface Key { kid: string, alg: string, privateKey: CryptoKey, jwk: JWK }

export interface TokenOptions {
  kid?: string
  alg?: string
  iss?: string
  aud?: string | string[]
  /** Seconds from now (negative: in the past); default 300. */
  exp?: number
  /** Seconds from now. */
  nbf?: number
  /** Sign with this key instead of the kid's own (a bad signature). */
  signWith?: CryptoKey
}

export interface TestIssuer {
  jwksUrl: string
  port: number
  server: TestUpstream | null
  /** JWKS requests the server answered. */
  fetches(): number
  addKey(kid: string, alg?: string): Promise<void>
  removeKey(kid: string): void
  token(claims?: Record<string, unknown>, opts?: TokenOptions): Promise<string>
  /** Starts the JWKS server (when made with `listening: false`), or revives it after kill(). */
  up(): Promise<void>
  /** Destroys every socket and closes the port. */
  kill(): Promise<void>
  close(): Promise<void>
}

/** Keys `k1` (RS256) and `k2` (ES256) to start with. */
export async function startIssuer (opts: { listening?: boolean } = {}): Promise<TestIssuer> {
  const keys = new Map<string, Key>()
  const port = await deadPort()
  let fetched = 0
  let server: TestUpstream | null = null
  const issuer: TestIssuer = {
    jwksUrl: `http://127.0.0.1:${port}/jwks.json`,
    port,
    get server () { return server },
    fetches: () => fetched,
    async addKey (kid, alg = 'RS256') {
      const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
      keys.set(kid, { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } })
    },
    removeKey (kid) { keys.delete(kid) },
    async token (claims = {}, o = {}) {
      const kid = o.kid ?? 'k1'
      const key = keys.get(kid)
      const alg = o.alg ?? key?.alg ?? 'RS256'
      const signer = o.signWith ?? key?.privateKey
      if (signer === undefined) throw new Error(`no key ${kid}: pass signWith`)
      const now = Math.floor(Date.now() / 1000)
      const jwt = new SignJWT({ sub: 'alice', ...claims })
        .setProtectedHeader({ alg, kid })
        .setIssuer(o.iss ?? ISSUER)
        .setAudience(o.aud ?? AUDIENCE)
        .setIssuedAt(now)
        .setExpirationTime(now + (o.exp ?? 300))
      if (o.nbf !== undefined) jwt.setNotBefore(now + o.nbf)
      return jwt.sign(signer)
    },
    async up () {
      if (server === null) {
        server = await startUpstream('jwks', (req, res) => {
          if (req.url !== '/jwks.json') return json(res, 404, {})
          fetched++
          json(res, 200, { keys: [...keys.values()].map((k) => k.jwk) })
        }, port)
      } else {
        await server.revive()
      }
    },
    async kill () { await server?.kill() },
    async close () { await server?.close() }
  }
  await issuer.addKey('k1', 'RS256')
  await issuer.addKey('k2', 'ES256')
  if (opts.listening !== false) await issuer.up()
  return issuer
}

/** An unsecured JWT (`alg: none`) with the given claims. */
export function unsecuredToken (claims: Record<string, unknown>): string {
  const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`
}

/** The `auth.jwt` block for an issuer, with short intervals for tests. */
export function jwtConfig (issuer: TestIssuer, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { jwksUrl: issuer.jwksUrl, issuer: ISSUER, audience: AUDIENCE, algorithms: ['RS256', 'ES256'], jwksTimeoutMs: 2000, ...extra }
}
