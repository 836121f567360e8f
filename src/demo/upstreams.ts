/**
 * Demo upstreams for `npm start`: a primary and a secondary of `product`,
 * `inventory` and the blue deployment of `review`, and a green `review`.
 * Every answer says which service and origin served it (`servedBy`), so a
 * failover drill or a blue/green shift is visible from curl.
 *
 * Each origin obeys a few control calls, for drills:
 *   POST /__demo/fail      answer 503 to everything, /health included
 *   POST /__demo/fail?rate=0.3  answer 503 to that share of requests (a bad
 *                          release: /health stays 200, so only a rollout's
 *                          analysis notices)
 *   POST /__demo/recover   answer normally again
 *   POST /__demo/down?ms=N close the port for N ms (default 15000), as if the process died
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

export interface DemoOrigin {
  service: 'product' | 'review' | 'inventory'
  name: string
  port: number
  version?: string
}

export const DEMO_ORIGINS: DemoOrigin[] = [
  { service: 'product', name: 'product-primary', port: 9101 },
  { service: 'product', name: 'product-secondary', port: 9102 },
  { service: 'review', name: 'review-blue-primary', port: 9201, version: 'blue' },
  { service: 'review', name: 'review-blue-secondary', port: 9202, version: 'blue' },
  { service: 'review', name: 'review-green-primary', port: 9203, version: 'green' },
  { service: 'inventory', name: 'inventory-primary', port: 9301 },
  { service: 'inventory', name: 'inventory-secondary', port: 9302 }
]

const PRODUCTS = ['Trail shoe', 'Rain jacket', 'Headlamp', 'Water bottle', 'Tent', 'Sleeping bag', 'Stove', 'Compass', 'Map case', 'Backpack']

function send (res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  const json = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json), ...extra })
  res.end(json)
}

function answer (o: DemoOrigin, req: IncomingMessage, res: ServerResponse, body: string): void {
  const url = new URL(req.url ?? '/', 'http://demo')
  const servedBy = o.name
  const rid = req.headers['x-request-id']
  const extra: Record<string, string> = typeof rid === 'string' ? { 'x-request-id': rid } : {}
  const parts = url.pathname.split('/').filter(Boolean)
  if (o.service === 'product' && parts[0] === 'products') {
    if (req.method === 'POST') return send(res, 201, { created: body === '' ? null : safeJson(body), servedBy }, extra)
    if (parts.length === 1) return send(res, 200, { products: PRODUCTS.map((name, i) => ({ id: i + 1, name })), servedBy }, extra)
    const id = Number(parts[1])
    if (!Number.isInteger(id) || id < 1 || id > PRODUCTS.length) return send(res, 404, { message: `no product ${parts[1]}` }, extra)
    return send(res, 200, { id, name: PRODUCTS[id - 1], price: 10 + id * 7.5, servedBy }, extra)
  }
  if (o.service === 'review' && parts[0] === 'reviews') {
    const productId = url.searchParams.get('productId')
    const reviews = o.version === 'green'
      ? [{ stars: 5, text: 'Great (green reviews service, with verified buyers)', verified: true }]
      : [{ stars: 4, text: 'Solid' }, { stars: 5, text: 'Love it' }]
    return send(res, 200, { productId, reviews, version: o.version, servedBy }, extra)
  }
  if (o.service === 'inventory' && parts[0] === 'inventory' && parts.length === 2) {
    const id = Number(parts[1])
    return send(res, 200, { id, inStock: id % 3 !== 0, warehouse: 'eu-west', servedBy }, extra)
  }
  send(res, 404, { message: 'not found', servedBy }, extra)
}

function safeJson (s: string): unknown {
  try { return JSON.parse(s) } catch { return s }
}

/** One running demo origin, with its drill controls. */
export class DemoUpstream {
  readonly origin: DemoOrigin
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #failing = false
  /** Share of requests answered 503 (0: none); /health is spared. */
  #failRate = 0
  #downTimer: NodeJS.Timeout | null = null

  constructor (origin: DemoOrigin) {
    this.origin = origin
    this.#server = createServer((req, res) => this.#handle(req, res))
    this.#server.on('connection', (s) => {
      this.#sockets.add(s)
      s.on('close', () => this.#sockets.delete(s))
    })
  }

  listen (host = '127.0.0.1'): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(this.origin.port, host, () => {
        this.#server.off('error', reject)
        resolve()
      })
    })
  }

  async close (): Promise<void> {
    if (this.#downTimer !== null) clearTimeout(this.#downTimer)
    for (const s of this.#sockets) s.destroy()
    if (this.#server.listening) await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  #handle (req: IncomingMessage, res: ServerResponse): void {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => { body += c })
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://demo')
      if (url.pathname === '/__demo/fail' && req.method === 'POST') {
        const rate = url.searchParams.get('rate')
        if (rate !== null) {
          const r = Number(rate)
          if (!(r >= 0 && r <= 1)) return send(res, 400, { message: 'rate must be a number from 0 to 1' })
          this.#failRate = r
          return send(res, 200, { origin: this.origin.name, mode: 'failing', rate: r })
        }
        this.#failing = true
        return send(res, 200, { origin: this.origin.name, mode: 'failing' })
      }
      if (url.pathname === '/__demo/recover' && req.method === 'POST') {
        this.#failing = false
        this.#failRate = 0
        return send(res, 200, { origin: this.origin.name, mode: 'ok' })
      }
      if (url.pathname === '/__demo/down' && req.method === 'POST') {
        const ms = Number(url.searchParams.get('ms') ?? 15000)
        send(res, 200, { origin: this.origin.name, mode: 'down', forMs: ms })
        setImmediate(() => { void this.#goDown(ms) })
        return
      }
      if (this.#failing) return send(res, 503, { message: 'demo failure mode', servedBy: this.origin.name })
      if (url.pathname === '/health') return send(res, 200, { status: 'ok', origin: this.origin.name })
      if (this.#failRate > 0 && Math.random() < this.#failRate) return send(res, 503, { message: 'demo failure rate', servedBy: this.origin.name })
      answer(this.origin, req, res, body)
    })
  }

  async #goDown (ms: number): Promise<void> {
    await this.close()
    this.#downTimer = setTimeout(() => { void this.listen().catch(() => {}) }, ms)
    this.#downTimer.unref()
  }
}

/** Starts every demo origin on loopback; rejects (and closes those started) if a port is taken. */
export async function startDemoUpstreams (): Promise<DemoUpstream[]> {
  const started: DemoUpstream[] = []
  try {
    for (const o of DEMO_ORIGINS) {
      const u = new DemoUpstream(o)
      await u.listen()
      started.push(u)
    }
  } catch (err) {
    await Promise.all(started.map((u) => u.close()))
    throw err
  }
  return started
}
