/**
 * SigV4 for `auth: iam` Lattice origins, as an undici interceptor.
 *
 * VPC Lattice checks IAM auth policies against a SigV4 signature for the
 * service `vpc-lattice-svcs`, over the Host the request carries. The
 * interceptor sits on every pool of such an origin (traffic and health
 * probes alike), so every attempt is signed at the moment it is dispatched,
 * for the host of the pool it goes to: a retry that fails over to the
 * secondary carries a fresh signature for the secondary's host.
 *
 * The body is never read: `x-amz-content-sha256: UNSIGNED-PAYLOAD` (what
 * Lattice expects for streamed bodies). Only `host` and the `x-amz-*`
 * headers are signed, so a hop that rewrites an end-to-end header cannot
 * break the signature. Credentials come from a provider that is called for
 * every signature; the AWS SDK's providers cache and refresh them, so
 * rotated credentials are picked up without a restart.
 */
import { SignatureV4 } from '@smithy/signature-v4'
import { Hash } from '@smithy/core/serde'
import type { Dispatcher } from 'undici'

/** The signing name of Lattice service traffic (not of the control plane). */
export const LATTICE_SIGNING_SERVICE = 'vpc-lattice-svcs'
export const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD'

type SignerInit = ConstructorParameters<typeof SignatureV4>[0]
/** Static credentials or a provider (`() => Promise<credentials>`). */
export type CredentialsInput = SignerInit['credentials']
/** What the signer takes: method, host, path, query, headers. */
export type SignableRequest = Parameters<SignatureV4['presign']>[0]

export interface LatticeSignerOptions {
  region: string | (() => Promise<string>)
  credentials: CredentialsInput
}

/** A SigV4 signer for Lattice service traffic. */
export function createLatticeSigner (opts: LatticeSignerOptions): SignatureV4 {
  return new SignatureV4({
    service: LATTICE_SIGNING_SERVICE,
    region: opts.region,
    credentials: opts.credentials,
    sha256: Hash.bind(null, 'sha256'),
    // Non-S3 services: each path segment is URI-encoded twice.
    uriEscapePath: true,
    applyChecksum: false
  })
}

// Headers the signer sets; a client's own values are dropped, never sent twice.
const REPLACED = new Set(['host', 'authorization', 'x-amz-date', 'x-amz-security-token', 'x-amz-content-sha256'])

/**
 * An interceptor that signs every request dispatched to `origin` (the pool's
 * base URL). Use with `pool.compose(sigv4Interceptor(signer, url))`.
 */
export function sigv4Interceptor (signer: SignatureV4, origin: URL): Dispatcher.DispatcherComposeInterceptor {
  // The Host undici sends for this pool: hostname plus a non-default port.
  const host = origin.host
  const protocol = origin.protocol
  const hostname = origin.hostname
  const port = origin.port === '' ? undefined : Number(origin.port)
  return (dispatch) => (opts, handler) => {
    const headers = plainHeaders(opts.headers)
    const { path, query } = splitPath(opts.path)
    const toSign: SignableRequest = {
      method: opts.method,
      protocol,
      hostname,
      port,
      path,
      query,
      headers: { host, 'x-amz-content-sha256': UNSIGNED_PAYLOAD }
    }
    signer.sign(toSign).then((signed) => {
      for (const [k, v] of Object.entries(signed.headers)) headers[k.toLowerCase()] = v
      try {
        dispatch({ ...opts, headers }, handler)
      } catch (err) {
        fail(handler, err)
      }
    }, (err: unknown) => {
      fail(handler, Object.assign(new Error(`cannot sign the request to ${host}: ${err instanceof Error ? err.message : String(err)}`, { cause: err }), { code: 'GW_SIGNING_FAILED' }))
    })
    // Signing is asynchronous: the pool decides about back-pressure when
    // the signed request reaches it.
    return true
  }
}

/** Fails a request that never reached the pool (the signature could not be made). */
function fail (handler: Dispatcher.DispatchHandler, err: unknown): void {
  const error = err instanceof Error ? err : new Error(String(err))
  const controller: Dispatcher.DispatchController = {
    aborted: true,
    paused: false,
    reason: error,
    abort () {},
    pause () {},
    resume () {}
  }
  if (handler.onResponseError !== undefined) handler.onResponseError(controller, error)
  else handler.onError?.(error)
}

/** The request's headers as a lower-cased object, without the ones the signature sets. */
function plainHeaders (h: Dispatcher.DispatchOptions['headers']): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  const add = (key: string, value: string | string[] | undefined): void => {
    if (value === undefined) return
    const k = key.toLowerCase()
    if (REPLACED.has(k)) return
    const prev = out[k]
    out[k] = prev === undefined ? value : ([] as string[]).concat(prev, value)
  }
  if (h === null || h === undefined) return out
  if (Array.isArray(h)) {
    // Flat [name, value, name, value, ...].
    for (let i = 0; i + 1 < h.length; i += 2) add(String(h[i]), String(h[i + 1]))
  } else if (typeof (h as Iterable<unknown>)[Symbol.iterator] === 'function') {
    for (const [k, v] of h as Iterable<[string, string | string[] | undefined]>) add(k, v)
  } else {
    for (const [k, v] of Object.entries(h as Record<string, string | string[] | undefined>)) add(k, v)
  }
  return out
}

/** Splits `/a/b?x=1&y` into the path and a decoded query (repeated keys become lists). */
export function splitPath (full: string): { path: string, query: Record<string, string | string[]> } {
  const q = full.indexOf('?')
  const query: Record<string, string | string[]> = {}
  if (q === -1) return { path: full, query }
  for (const part of full.slice(q + 1).split('&')) {
    if (part === '') continue
    const eq = part.indexOf('=')
    const key = decode(eq === -1 ? part : part.slice(0, eq))
    const value = eq === -1 ? '' : decode(part.slice(eq + 1))
    const prev = query[key]
    query[key] = prev === undefined ? value : ([] as string[]).concat(prev, value)
  }
  return { path: full.slice(0, q), query }
}

function decode (s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}
