/**
 * The response cache (SPEC §12): one byte-bounded LRU per process
 * (`server.cacheMaxBytes`, lru-cache's `maxSize` with a size per entry),
 * shared by cached aggregate sections and cached proxy routes. An entry
 * is fresh until `freshUntil` (served without an upstream call) and usable
 * until `staleUntil` only when every origin failed (stale-if-error); past
 * that it is dropped on the next look-up.
 *
 * Keys are built once per call from the service, the upstream path and
 * query, and the values of the `vary` headers. What may be stored follows
 * the upstream's `Cache-Control`: `no-store` and `private` never are,
 * `s-maxage` / `max-age` cap the configured `ttlMs` (`no-cache` is
 * `max-age=0`: kept for stale-if-error only).
 */
import { LRUCache } from 'lru-cache'
import type { IncomingHttpHeaders } from 'node:http'
import type { GatewayConfig } from '../config/schema.js'

export interface CacheEntry {
  readonly status: number
  /** The answer's end-to-end headers (proxy routes), or null (sections keep only their bytes). */
  readonly headers: Readonly<Record<string, string | string[]>> | null
  readonly body: Buffer
  readonly storedAt: number
  readonly freshUntil: number
  readonly staleUntil: number
}

/** The `result` label of `gateway_cache_total`. */
export const CACHE_RESULTS = ['hit', 'miss', 'stale', 'bypass'] as const
export type CacheResult = typeof CACHE_RESULTS[number]

// Keys, header maps and the entry object itself, roughly.
const ENTRY_OVERHEAD = 256

export class ResponseCache {
  readonly #lru: LRUCache<string, CacheEntry>
  readonly now: () => number

  constructor (maxBytes: number, now: () => number = Date.now) {
    this.now = now
    this.#lru = new LRUCache<string, CacheEntry>({
      maxSize: maxBytes,
      sizeCalculation: (e, key) => e.body.length + key.length * 2 + ENTRY_OVERHEAD + (e.headers === null ? 0 : headerBytes(e.headers))
    })
  }

  /** The entry for `key` while it is fresh or stale-usable; a dead one is dropped. */
  get (key: string): CacheEntry | undefined {
    const e = this.#lru.get(key)
    if (e === undefined) return undefined
    if (this.now() >= e.staleUntil) {
      this.#lru.delete(key)
      return undefined
    }
    return e
  }

  /** Stores an answer for `ttlMs` (fresh) plus `staleMs` (stale-if-error); false when it does not fit. */
  set (key: string, status: number, headers: CacheEntry['headers'], body: Buffer, ttlMs: number, staleMs: number): boolean {
    const now = this.now()
    const entry: CacheEntry = { status, headers, body, storedAt: now, freshUntil: now + ttlMs, staleUntil: now + ttlMs + staleMs }
    if (entry.staleUntil <= now) return false
    this.#lru.set(key, entry)
    return this.#lru.has(key)
  }

  /** Bytes held, as counted against `cacheMaxBytes`. */
  get bytes (): number { return this.#lru.calculatedSize }
  get size (): number { return this.#lru.size }
}

function headerBytes (h: Readonly<Record<string, string | string[]>>): number {
  let n = 0
  for (const k in h) {
    const v = h[k]!
    n += k.length + (typeof v === 'string' ? v.length : v.join(', ').length)
  }
  return n
}

/** A cache key: service, upstream path and query, and the values of the vary headers (lower-case names). */
export function cacheKey (service: string, path: string, vary: readonly string[], headers: IncomingHttpHeaders | Readonly<Record<string, string | string[] | undefined>>): string {
  let key = `${service}\u0000${path}`
  for (let i = 0; i < vary.length; i++) {
    const v = headers[vary[i]!]
    key += `\u0000${v === undefined ? '' : Array.isArray(v) ? v.join(', ') : v}`
  }
  return key
}

/**
 * How long an answer may be served fresh, from the configured `ttlMs`
 * and the upstream's `Cache-Control`: null when it must not be stored.
 */
export function storableTtl (cacheControl: string | string[] | undefined, ttlMs: number): number | null {
  if (cacheControl === undefined) return ttlMs
  const text = Array.isArray(cacheControl) ? cacheControl.join(',') : cacheControl
  let maxAge: number | null = null
  let sMaxAge: number | null = null
  for (const part of text.split(',')) {
    const eq = part.indexOf('=')
    const name = (eq === -1 ? part : part.slice(0, eq)).trim().toLowerCase()
    if (name === 'no-store' || name === 'private') return null
    if (name === 'no-cache') maxAge = 0
    else if (name === 'max-age' || name === 's-maxage') {
      const n = Number((eq === -1 ? '' : part.slice(eq + 1)).trim().replace(/^"|"$/g, ''))
      if (!Number.isFinite(n) || n < 0) continue
      if (name === 'max-age') maxAge = maxAge === 0 ? 0 : n
      else sMaxAge = n
    }
  }
  // A shared cache takes s-maxage over max-age (RFC 9111 §5.2.2.10).
  const seconds = sMaxAge ?? maxAge
  return seconds === null ? ttlMs : Math.min(ttlMs, Math.floor(seconds * 1000))
}

/** True when some proxy route or aggregate section has `cache:`. */
export function usesCache (config: GatewayConfig): boolean {
  return config.routes.some((r) => r.type === 'proxy' ? r.cache !== undefined : Object.values(r.sections).some((s) => s.cache !== undefined))
}
