/**
 * Bearer-token verification against a remote JWKS (SPEC §14), with jose's
 * `createRemoteJWKSet` (fetching, timeouts, key import and caching) and
 * `jwtVerify` (signature, `alg`, `iss`, `aud`, `exp`/`nbf`).
 *
 * When the JWKS is fetched is decided here, not by jose, because two of
 * jose's defaults do not give what the SPEC promises:
 *  - jose's `cooldownDuration` counts from the last *successful* fetch: with
 *    the JWKS down, every token with an unknown `kid` would fetch again.
 *    Here every attempt, failed or not, starts the cooldown
 *    (`jwksCooldownMs`, 30 s): at most one refetch per cooldown.
 *  - jose's `cacheMaxAge` makes a request wait on a refetch once the keys
 *    are older than it, and fail when that refetch fails: a JWKS outage
 *    would then fail tokens whose keys are known. Here the keys never
 *    expire on the request path (jose gets `cacheMaxAge: Infinity`); a
 *    background re-read every `jwksRefreshMs` picks up rotations and
 *    removed keys, and a failed re-read keeps the keys in hand.
 * Until the JWKS has been fetched once, a request with a token triggers an
 * attempt (at most one per second, coalesced) and gets `unavailable`
 * (503) if it fails; the gateway starts whatever the JWKS does.
 *
 * States, with a `state` event on each transition: `unfetched` (no keys
 * yet), `ok` (the last read worked), `stale` (keys in hand, the last read
 * failed).
 */
import { EventEmitter } from 'node:events'
import { createRemoteJWKSet, jwtVerify, errors, type JWTPayload, type JWTVerifyOptions, type JWTHeaderParameters, type FlattenedJWSInput, type CryptoKey } from 'jose'
import type { JwtConfig } from '../config/schema.js'

export type JwksState = 'unfetched' | 'ok' | 'stale'

/** A `state` event: the JWKS moved from one state to another. */
export interface JwksTransition {
  from: JwksState
  to: JwksState
  /** Why (an error code or `fetched`); never a token or a key. */
  reason: string
}

/** Why a token was refused: `unauthenticated` (401) or `unavailable` (503, no keys yet). */
export class AuthFailure extends Error {
  readonly kind: 'unauthenticated' | 'unavailable'
  constructor (kind: 'unauthenticated' | 'unavailable', message: string) {
    super(message)
    this.name = 'AuthFailure'
    this.kind = kind
  }
}

// While the JWKS was never fetched, requests retry it at most this often.
const FIRST_FETCH_RETRY_MS = 1000

type RemoteSet = ReturnType<typeof createRemoteJWKSet>

/** Verifies bearer tokens for every route with `auth` (one per gateway). */
export class JwtVerifier extends EventEmitter<{ state: [JwksTransition] }> {
  #state: JwksState = 'unfetched'
  readonly #remote: RemoteSet
  readonly #options: JWTVerifyOptions
  readonly #cooldownMs: number
  readonly #refreshMs: number
  #lastAttempt = -Infinity
  #pending: Promise<void> | null = null
  #timer: NodeJS.Timeout | null = null
  readonly #getKey: (header: JWTHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>

  constructor (config: JwtConfig) {
    super()
    this.#remote = createRemoteJWKSet(new URL(config.jwksUrl), {
      timeoutDuration: config.jwksTimeoutMs,
      // Both decided here (see the module comment): jose never refetches on its own.
      cooldownDuration: Infinity,
      cacheMaxAge: Infinity
    })
    this.#options = {
      issuer: config.issuer,
      audience: config.audience,
      algorithms: [...config.algorithms],
      clockTolerance: config.clockToleranceSec
    }
    this.#cooldownMs = config.jwksCooldownMs
    this.#refreshMs = config.jwksRefreshMs
    const remote = this.#remote
    this.#getKey = async (header, token) => {
      try {
        return await remote(header, token)
      } catch (err) {
        // An unknown key: maybe rotated in. One refetch per cooldown, then try again.
        if (err instanceof errors.JWKSNoMatchingKey && Date.now() - this.#lastAttempt >= this.#cooldownMs) {
          await this.#fetch()
          return await remote(header, token)
        }
        throw err
      }
    }
  }

  get state (): JwksState { return this.#state }

  /** Fetches the JWKS now and re-reads it every `jwksRefreshMs`. */
  start (): void {
    if (this.#timer !== null) return
    this.#fetch().catch(() => {})
    this.#timer = setInterval(() => { this.#fetch().catch(() => {}) }, this.#refreshMs)
    this.#timer.unref()
  }

  close (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  /** The verified claims of a compact JWS, or an AuthFailure. */
  async verify (token: string): Promise<JWTPayload> {
    if (this.#state === 'unfetched') {
      if (this.#pending === null && Date.now() - this.#lastAttempt >= Math.min(FIRST_FETCH_RETRY_MS, this.#cooldownMs)) this.#fetch().catch(() => {})
      if (this.#pending !== null) await this.#pending
      if (this.#state === 'unfetched') throw new AuthFailure('unavailable', 'the token keys (JWKS) could not be fetched yet')
    }
    try {
      return (await jwtVerify(token, this.#getKey, this.#options)).payload
    } catch (err) {
      throw new AuthFailure('unauthenticated', reason(err))
    }
  }

  /** One JWKS read (coalesced); never rejects, records the attempt and the state. */
  #fetch (): Promise<void> {
    if (this.#pending !== null) return this.#pending
    this.#lastAttempt = Date.now()
    const p = this.#remote.reload().then(
      () => { this.#lastAttempt = Date.now(); this.#moveTo('ok', 'fetched') },
      (err: unknown) => { this.#moveTo(this.#state === 'unfetched' ? 'unfetched' : 'stale', errorCode(err)) }
    ).finally(() => { this.#pending = null })
    this.#pending = p
    return p
  }

  #moveTo (to: JwksState, reason: string): void {
    const from = this.#state
    if (from === to && (to !== 'unfetched' || reason === this.#lastFailure)) return
    this.#lastFailure = reason
    this.#state = to
    this.emit('state', { from, to, reason })
  }

  #lastFailure = ''
}

/** What the client is told: the kind of problem, never a claim value. */
function reason (err: unknown): string {
  const code = errorCode(err)
  switch (code) {
    case 'ERR_JWT_EXPIRED': return 'the bearer token has expired'
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const claim = (err as errors.JWTClaimValidationFailed).claim
      return claim === 'nbf' ? 'the bearer token is not valid yet' : `the bearer token's "${claim}" claim is not accepted`
    }
    case 'ERR_JOSE_ALG_NOT_ALLOWED': return 'the bearer token\'s algorithm is not accepted'
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED': return 'the bearer token\'s signature does not verify'
    case 'ERR_JWKS_NO_MATCHING_KEY': return 'the bearer token is signed with an unknown key'
    default: return 'the bearer token is malformed'
  }
}

function errorCode (err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code
  if (err instanceof Error && err.cause !== undefined) return errorCode(err.cause)
  return err instanceof Error ? err.name : 'unknown'
}
