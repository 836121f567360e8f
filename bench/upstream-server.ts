/**
 * A bench upstream: a bare node:http server on 127.0.0.1:0 that answers
 * every path with the same JSON document (1 KB by default), optionally
 * after a fixed delay. It stands in for one service origin behind
 * lattice-gateway. Started by `startUpstream()` in bench/lib.ts, always
 * from its compiled form (dist/bench/upstream-server.js) so it runs
 * without a TypeScript loader.
 *
 *   node upstream-server.js [--name N] [--latency MS] [--bytes N] [--status CODE] [--read-body] [--tail-every N --tail-ms MS]
 *
 * With `--tail-every N`, every Nth request waits `--tail-ms` instead of
 * `--latency` (a slow tail: N = 20 is 5% of answers).
 *
 * Protocol with the parent: the first stdout line is `{"port":N,"pid":P}`;
 * the process exits when its stdin closes (the bench runner died) or on
 * SIGTERM/SIGINT.
 *
 * Control, for scenarios that need to change an origin under load:
 *   GET /health        200 (or 503 once `healthy` is false)
 *   GET /__bench       {"name","requests","latencyMs","status","healthy"}
 *   PUT /__bench       JSON body with any of {latencyMs, status, healthy, failRate}
 *                      (failRate: share of requests answered 503, 0-1);
 *                      applies to the next request, answers the new state
 * Every other request is counted and answered with `status` and the
 * document; the `x-origin` header carries `--name`.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { serveHttpUntilParentGoes } from './helper-process.js'
import { parseArgs } from 'node:util'

const { values } = parseArgs({
  options: {
    name: { type: 'string', default: 'upstream' },
    latency: { type: 'string', default: '0' },
    bytes: { type: 'string', default: '1024' },
    status: { type: 'string', default: '200' },
    // Answer a request with a body only once the whole body is in (as a service that parses it does).
    'read-body': { type: 'boolean', default: false },
    'tail-every': { type: 'string', default: '0' },
    'tail-ms': { type: 'string', default: '0' }
  }
})
const tailEvery = Number(values['tail-every'])
const tailMs = Number(values['tail-ms'])

const name = values.name
const state = {
  latencyMs: Number(values.latency),
  status: Number(values.status),
  healthy: true,
  failRate: 0
}
let requests = 0

/** A JSON document of exactly `size` bytes (for size >= 64). */
function documentOfSize (size: number, origin: string): Buffer {
  const doc = { origin, id: 1, items: [] as Array<{ sku: string, qty: number }>, pad: '' }
  let i = 0
  while (Buffer.byteLength(JSON.stringify(doc)) + 40 < size) {
    doc.items.push({ sku: `sku-${String(i).padStart(4, '0')}`, qty: i % 7 })
    i++
  }
  doc.pad = 'x'.repeat(Math.max(0, size - Buffer.byteLength(JSON.stringify(doc))))
  return Buffer.from(JSON.stringify(doc))
}

const body = documentOfSize(Number(values.bytes), name)
const headers = { 'content-type': 'application/json', 'content-length': String(body.length), 'x-origin': name }

function answer (res: ServerResponse): void {
  res.writeHead(state.failRate > 0 && Math.random() < state.failRate ? 503 : state.status, headers)
  res.end(body)
}

function control (req: IncomingMessage, res: ServerResponse): void {
  const reply = (): void => {
    const json = JSON.stringify({ name, requests, ...state })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) })
    res.end(json)
  }
  if (req.method !== 'PUT') { reply(); return }
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    try {
      const patch = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Partial<typeof state>
      if (typeof patch.latencyMs === 'number') state.latencyMs = patch.latencyMs
      if (typeof patch.status === 'number') state.status = patch.status
      if (typeof patch.healthy === 'boolean') state.healthy = patch.healthy
      if (typeof patch.failRate === 'number') state.failRate = patch.failRate
      reply()
    } catch {
      res.writeHead(400).end()
    }
  })
}

const server = createServer((req, res) => {
  const url = req.url ?? '/'
  if (url === '/health') {
    res.writeHead(state.healthy ? 200 : 503, { 'content-type': 'text/plain' }).end(state.healthy ? 'ok' : 'unhealthy')
    return
  }
  if (url === '/__bench') { control(req, res); return }
  requests++
  // A request body (POST scenarios) is drained before answering, as a real service would.
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    req.resume()
    if (values['read-body'] === true) {
      req.once('end', () => { if (state.latencyMs > 0) setTimeout(answer, state.latencyMs, res); else answer(res) })
      return
    }
  }
  const delay = tailEvery > 0 && requests % tailEvery === 0 ? tailMs : state.latencyMs
  if (delay > 0) setTimeout(answer, delay, res)
  else answer(res)
})
server.keepAliveTimeout = 72_000

serveHttpUntilParentGoes(server)
