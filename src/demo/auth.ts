/**
 * The demo's token issuer (SPEC §14): a fixed ES256 key pair whose public
 * half the demo serves as a JWKS on loopback (src/demo/upstreams.ts, port
 * 9401), and a minting function for `npm run demo:token`.
 *
 * The private key is in this file on purpose: it signs demo tokens only,
 * for a gateway on 127.0.0.1. Never put a JWKS with this key in front of
 * anything real.
 */
import { importJWK, SignJWT, type JWK } from 'jose'

export const DEMO_JWKS_PORT = 9401
export const DEMO_ISSUER = `http://127.0.0.1:${DEMO_JWKS_PORT}/`
export const DEMO_JWKS_URL = `http://127.0.0.1:${DEMO_JWKS_PORT}/.well-known/jwks.json`
export const DEMO_AUDIENCE = 'lattice-demo'
const KID = 'demo-es256-1'

const PUBLIC: JWK = { kty: 'EC', crv: 'P-256', x: 'j5m9Kg4mqhzmYb5aEPAJkxMLu8utgFnLMATqvTg12DI', y: 'Sm6Jw7snRxdVRGTNsVaLuiqbZHOE92SB2oPf1JoLtUE' }
const PRIVATE: JWK = { ...PUBLIC, d: 'x0gEH5-3zGMbCf9QzOoK1qopu8vuJGulL4NdcTMZ8Ns' }

/** The JWKS the demo serves. */
export const DEMO_JWKS = { keys: [{ ...PUBLIC, kid: KID, alg: 'ES256', use: 'sig' }] }

/** A demo token for `sub` (with `scope` when given), valid for `ttlSec`. */
export async function mintDemoToken (sub = 'alice', scope?: string, ttlSec = 3600): Promise<string> {
  const key = await importJWK(PRIVATE, 'ES256')
  const claims: Record<string, unknown> = { sub }
  if (scope !== undefined) claims.scope = scope
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: KID })
    .setIssuer(DEMO_ISSUER)
    .setAudience(DEMO_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSec)
    .sign(key)
}
