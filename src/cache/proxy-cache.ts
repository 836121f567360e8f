/**
 * The response cache on a proxy route (`cache:` on `type: proxy`, SPEC
 * §12), kept apart from routes/proxy.ts so the route only asks three
 * things: is there an entry for this request (`lookup`, before the
 * upstream call), answer from it (`serve`: `x-cache: HIT`, or `STALE` when
 * every origin failed), and keep a copy of the answer being relayed
 * (`tee`: `x-cache: MISS`).
 *
 * What is cached: GET answers with status 200, no `set-cookie`, a
 * `Cache-Control` that allows a shared cache, up to `maxEntryBytes`. HEAD
 * requests are answered from entries a GET stored (never stored
 * themselves). A request with a body, or carrying `authorization` when
 * that header is not in `vary`, is not served from the cache nor stored
 * (`bypass`).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { CacheConfig } from '../config/schema.js'
import type { UpstreamResponse } from '../upstream/origin-group.js'
import type { BodySink } from '../upstream/upstream-body.js'
import { CACHE_RESULTS, cacheKey, storableTtl, type CacheEntry, type CacheResult, type ResponseCache } from './store.js'

interface Tally { inc(): void }

/** Where the counters come from (the gateway's Metrics). */
export interface CacheMetricsSource {
  cacheCounters(route: string, section: string, results: readonly CacheResult[]): Record<CacheResult, Tally>
}

/** One request's look-up: its key and the entry found (fresh or only stale-usable). */
export interface ProxyLookup {
  readonly key: string
  readonly entry: CacheEntry | undefined
  readonly fresh: boolean
}

export class ProxyCache {
  readonly #store: ResponseCache
  readonly #service: string
  readonly #ttlMs: number
  readonly #staleMs: number
  readonly #vary: readonly string[]
  readonly #variesOnAuth: boolean
  readonly #maxEntryBytes: number
  readonly #counters: Record<CacheResult, Tally> | null

  constructor (cfg: CacheConfig, service: string, store: ResponseCache, label: string, metrics: CacheMetricsSource | null) {
    this.#store = store
    this.#service = service
    this.#ttlMs = cfg.ttlMs
    this.#staleMs = cfg.staleIfErrorMs
    this.#vary = [...new Set(cfg.vary.map((h) => h.toLowerCase()))]
    this.#variesOnAuth = this.#vary.includes('authorization')
    this.#maxEntryBytes = cfg.maxEntryBytes
    this.#counters = metrics === null ? null : metrics.cacheCounters(label, '', CACHE_RESULTS)
  }

  /**
   * The look-up for a request about to go to `path` upstream; null when the
   * request is not cacheable (counted `bypass`; its answer says MISS).
   */
  lookup (request: FastifyRequest, path: string): ProxyLookup | null {
    const h = request.headers
    if ((request.method !== 'GET' && request.method !== 'HEAD') || h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0') || (!this.#variesOnAuth && h.authorization !== undefined)) {
      this.#count('bypass')
      return null
    }
    const key = cacheKey(this.#service, path, this.#vary, h)
    const entry = this.#store.get(key)
    const fresh = entry !== undefined && this.#store.now() < entry.freshUntil
    if (fresh) this.#count('hit')
    return { key, entry, fresh }
  }

  /** True when `res` is a failure a stale entry should stand in for (every origin failed). */
  failed (res: UpstreamResponse): boolean {
    return res.statusCode >= 500
  }

  /** Answers from an entry: `x-cache: HIT`, or `STALE` (counted) when standing in for a failure. */
  serve (request: FastifyRequest, reply: FastifyReply, entry: CacheEntry, stale: boolean): FastifyReply {
    if (stale) this.#count('stale')
    request.upstream = stale ? 'cache:stale' : 'cache'
    reply.code(entry.status)
    reply.headers(entry.headers ?? {})
    reply.header('content-length', entry.body.length)
    reply.header('age', Math.max(0, Math.floor((this.#store.now() - entry.storedAt) / 1000)))
    reply.header('x-cache', stale ? 'STALE' : 'HIT')
    reply.header('x-request-id', request.id)
    return reply.send(request.method === 'HEAD' ? undefined : entry.body)
  }

  /**
   * Marks the answer `x-cache: MISS` in `out` (counted) and, when it may be
   * stored, keeps a copy of its bytes as they are relayed: the body's
   * consumer is wrapped, so the relay itself is unchanged.
   */
  tee (request: FastifyRequest, lookup: ProxyLookup | null, res: UpstreamResponse, out: Record<string, string | string[]>): void {
    out['x-cache'] = 'MISS'
    if (lookup === null) return // not cacheable: counted as bypass
    this.#count('miss')
    if (request.method !== 'GET' || res.statusCode !== 200 || res.headers['set-cookie'] !== undefined) return
    const ttl = storableTtl(res.headers['cache-control'], this.#ttlMs)
    if (ttl === null) return
    const max = this.#maxEntryBytes
    if (Number(res.headers['content-length'] ?? 0) > max) return
    const headers: Record<string, string | string[]> = {}
    for (const k in out) if (k !== 'x-cache' && k !== 'x-request-id' && k !== 'content-length') headers[k] = out[k]!
    const store = this.#store
    const key = lookup.key
    const staleMs = this.#staleMs
    const body = res.body
    const consume = body.consume.bind(body)
    body.consume = (sink: BodySink): void => {
      const chunks: Buffer[] = []
      let n = 0
      consume({
        data (chunk) {
          if (n <= max) {
            n += chunk.length
            if (n <= max) chunks.push(chunk)
          }
          return sink.data(chunk)
        },
        end () {
          if (n <= max) store.set(key, 200, headers, Buffer.concat(chunks, n), ttl, staleMs)
          sink.end()
        },
        error (err) { sink.error(err) }
      })
    }
  }

  #count (r: CacheResult): void {
    if (this.#counters !== null) this.#counters[r].inc()
  }
}
