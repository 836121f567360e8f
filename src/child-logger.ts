/**
 * Per-request loggers made on first use. Fastify gives every request a
 * child logger carrying its `reqId`; a pino child costs a bindings
 * serialisation (and a redaction pass) each time, yet almost no request
 * logs through it: the access line is written by plugins/request-log.ts
 * and only errors use `request.log`. The child is therefore made when a
 * request first logs, with the same bindings, so the line is the same.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Bindings, ChildLoggerOptions, LogFn } from 'pino'

class LazyChild {
  readonly #parent: FastifyBaseLogger
  readonly #bindings: Bindings
  readonly #options: ChildLoggerOptions
  #child: FastifyBaseLogger | null = null

  constructor (parent: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions) {
    this.#parent = parent
    this.#bindings = bindings
    this.#options = options
  }

  get #log (): FastifyBaseLogger {
    return (this.#child ??= this.#parent.child(this.#bindings, this.#options))
  }

  get level (): string { return this.#child?.level ?? this.#options.level ?? this.#parent.level }
  set level (level: string) { this.#log.level = level }

  fatal (...args: Parameters<LogFn>): void { this.#log.fatal(...args) }
  error (...args: Parameters<LogFn>): void { this.#log.error(...args) }
  warn (...args: Parameters<LogFn>): void { this.#log.warn(...args) }
  info (...args: Parameters<LogFn>): void { this.#log.info(...args) }
  debug (...args: Parameters<LogFn>): void { this.#log.debug(...args) }
  trace (...args: Parameters<LogFn>): void { this.#log.trace(...args) }
  silent (...args: Parameters<LogFn>): void { this.#log.silent(...args) }
  child (bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger { return this.#log.child(bindings, options) }
}

/** Fastify's `childLoggerFactory`: the request's logger, made on first use. */
export function lazyChildLogger (logger: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions): FastifyBaseLogger {
  // The overloads of pino's LogFn are all served by the rest-argument
  // forwarders above; TypeScript cannot see a method set as an overload set.
  return new LazyChild(logger, bindings, options) as unknown as FastifyBaseLogger
}
