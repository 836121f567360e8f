/**
 * The one catalogue of errors a client or operator can see (SPEC §6).
 *
 * The `code` is the key: clients match on it, tests check it against the
 * SPEC, and the error handler maps anything else (fastify's own FST_* errors,
 * undici's UND_ERR_*) onto one of these. Messages never carry upstream
 * details, stack traces or secrets.
 */
import { STATUS_CODES } from 'node:http'

export const ErrorCodes = {
  GW_BAD_REQUEST: 400,
  GW_UNAUTHORIZED: 401,
  GW_FORBIDDEN: 403,
  GW_NO_ROUTE: 404,
  GW_NOT_FOUND: 404,
  GW_METHOD_NOT_ALLOWED: 405,
  GW_CLIENT_TIMEOUT: 408,
  GW_CONFLICT: 409,
  GW_BODY_TOO_LARGE: 413,
  GW_SECTION_STATUS: 0, // the failing section's own 4xx status
  GW_INTERNAL: 500,
  GW_UPSTREAM_FAILED: 502,
  GW_OVERLOADED: 503,
  GW_DEADLINE: 504,
  // --- fleet (SPEC §10) ---
  GW_VERSION_CONFLICT: 412,
  GW_FLEET_UNAVAILABLE: 503,
  // --- rollouts (SPEC §11) ---
  GW_NO_ROLLOUT: 404
} as const

export type ErrorCode = keyof typeof ErrorCodes

/** The JSON body every gateway error answers with. */
export interface ErrorBody {
  statusCode: number
  code: ErrorCode
  error: string
  message: string
  section?: string
}

/** An error the gateway answers with; `statusCode` and `code` are the contract. */
export class GatewayError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  readonly section: string | undefined
  /** Extra response headers (e.g. `retry-after` on 503). */
  readonly headers: Record<string, string> | undefined

  constructor (code: ErrorCode, message: string, opts: { statusCode?: number, section?: string, headers?: Record<string, string>, cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'GatewayError'
    this.code = code
    this.statusCode = opts.statusCode ?? ErrorCodes[code]
    this.section = opts.section
    this.headers = opts.headers
  }

  toJSON (): ErrorBody {
    return errorBody(this.code, this.statusCode, this.message, this.section)
  }
}

/** Builds the SPEC §6 body; `error` is the status text. */
export function errorBody (code: ErrorCode, statusCode: number, message: string, section?: string): ErrorBody {
  const body: ErrorBody = { statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message }
  if (section !== undefined) body.section = section
  return body
}

// undici and node error codes that mean nothing reached the origin: the
// connection was never established, so any method may go to the other one.
const NEVER_SENT = new Set([
  'GW_UNRESOLVED', 'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT', 'ERR_TLS_CERT_ALTNAME_INVALID', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'CERT_HAS_EXPIRED'
])
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'GW_DEADLINE'])

/** How an upstream attempt failed, decided by `err.code`, never by message. */
export type FailureKind = 'connect' | 'timeout' | 'reset'

export function classifyUpstreamError (err: unknown): FailureKind {
  const code = errorCode(err)
  if (code !== undefined && NEVER_SENT.has(code)) return 'connect'
  if (code !== undefined && TIMEOUTS.has(code)) return 'timeout'
  if (err instanceof Error && err.name === 'AbortError') return 'timeout'
  return 'reset'
}

export function errorCode (err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code
  return undefined
}

/**
 * Maps an upstream failure (an undici error, a deadline) onto what the
 * client sees: 504 GW_DEADLINE for a timeout, else 502 GW_UPSTREAM_FAILED.
 * The cause is kept for the log, never sent.
 */
export function upstreamFailure (err: unknown, service: string): GatewayError {
  if (err instanceof GatewayError && err.code !== 'GW_DEADLINE') return err
  const kind = classifyUpstreamError(err)
  if (kind === 'timeout') return new GatewayError('GW_DEADLINE', `service ${service} did not answer in time`, { cause: err })
  return new GatewayError('GW_UPSTREAM_FAILED', `service ${service}: every allowed origin failed (${kind === 'connect' ? 'could not connect' : 'connection failed'})`, { cause: err })
}
