/**
 * The gateway's logging, in one place: the pino options every logger is
 * built with (the real process and the tests alike), the stdout
 * destination, and the one log line per state transition.
 *
 * Every line is one JSON object with no key twice (SPEC §16). The process's
 * identity is pino's `name` (`"name":"lattice-gateway"`); `service` is never
 * a binding, because event lines use it for the upstream service (SPEC §4).
 */
import pino, { type Logger, type LoggerOptions } from 'pino'
import type { Registry } from './upstream/registry.js'

/** The process identity on every line (pino's `name`). */
export const LOGGER_NAME = 'lattice-gateway'

/** Secrets never written to logs, wherever they appear. */
export const REDACT = [
  'req.headers.authorization', 'req.headers.cookie', 'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]', 'headers.authorization', 'headers.cookie',
  'token', '*.token', 'admin.token', 'credentials', '*.credentials', '*.secretAccessKey', '*.sessionToken',
  // Hardening: raw bytes carried by parser errors (an upstream's answer, a client's request).
  'err.data', 'err.rawPacket',
  // Fleet: the store URL may carry a password.
  'fleet.url', 'config.fleet.url'
]

/**
 * The options of every gateway logger. No `pid`/`hostname` base: a cluster
 * binds `pid` itself (with `worker`), and a container knows its host.
 */
export function loggerOptions (level: string): LoggerOptions {
  return { level, name: LOGGER_NAME, base: {}, redact: { paths: REDACT, censor: '[redacted]' } }
}

/**
 * Linux's PIPE_BUF: a write(2) of at most this many bytes to a pipe is
 * atomic, so lines of processes sharing one stdout never interleave.
 */
export const PIPE_BUF = 4096

export interface CreateLoggerOptions {
  /**
   * Several processes (a cluster's primary and workers) write to one
   * stdout: every write(2) holds whole lines and stays within PIPE_BUF.
   */
  shared?: boolean
}

/** A logger at `level` writing to stdout. */
export function createLogger (level: string, opts: CreateLoggerOptions = {}): Logger {
  // Buffered writes: a line per request must not cost a write(2) each.
  // Lines wait at most 250 ms for a buffer to fill; what is left is
  // written when the process exits. Synchronous writes of whole buffers
  // cost less CPU than the thread-pool round trip of asynchronous ones.
  // A shared stdout: sonic-boom groups whole lines into writes of at most
  // `maxWrite` bytes, so each write(2) is atomic (only a single line
  // longer than PIPE_BUF could still be split, and it is one line).
  const dest = opts.shared === true
    ? pino.destination({ dest: 1, sync: true, minLength: PIPE_BUF / 2, maxWrite: PIPE_BUF })
    : pino.destination({ dest: 1, sync: true, minLength: 8192 })
  setInterval(() => { dest.flush() }, 250).unref()
  process.once('exit', () => { try { dest.flushSync() } catch {} })
  return pino(loggerOptions(level), dest)
}

/** One log line per state transition, never per request. */
export function logTransitions (registry: Registry, logger: Logger): void {
  registry.on('health', (e) => logger.warn({ event: 'origin_health', service: e.origin.service, deployment: e.origin.deployment, origin: e.origin.role, healthy: e.healthy, from: e.healthy ? 'unhealthy' : 'healthy', to: e.healthy ? 'healthy' : 'unhealthy', reason: e.reason }, `origin ${e.origin.label} is ${e.healthy ? 'healthy' : 'unhealthy'}`))
  registry.on('breaker', (e) => logger.warn({ event: 'breaker', service: e.origin.service, deployment: e.origin.deployment, origin: e.origin.role, state: e.state, from: e.from, to: e.state, reason: e.reason }, `breaker of ${e.origin.label}: ${e.from} -> ${e.state}`))
  registry.on('failover', (e) => logger.warn({ event: 'failover', service: e.service, deployment: e.deployment, kind: e.kind, from: e.from, to: e.to, reason: e.reason }, `${e.service}/${e.deployment}: ${e.kind} ${e.from} -> ${e.to}`))
  registry.on('traffic', (e) => logger.warn({ event: 'traffic', service: e.service, from: e.from, to: e.to, changed: e.changed, by: e.by, version: e.version }, `${e.service}: traffic ${weights(e.from)} -> ${weights(e.to)} by ${e.by}${e.version === undefined ? '' : ` (version ${e.version})`}`))
}

/** `blue=0 green=100`, for log messages. */
function weights (w: Readonly<Record<string, number>>): string {
  return Object.entries(w).map(([dep, n]) => `${dep}=${n}`).join(' ')
}
