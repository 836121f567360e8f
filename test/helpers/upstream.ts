/**
 * Real upstream servers for tests: node:http on 127.0.0.1:0, recording
 * every request (method, url, headers, body) and answering through a
 * handler the test can swap at any time. `/health` answers 200 while
 * `healthy` is true, else 503. `kill()` destroys every socket and closes
 * the port, as a SIGKILLed process would.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export interface RecordedRequest {
  method: string
  url: string
  headers: IncomingHttpHeaders
  body: Buffer
}

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void

export interface TestUpstream {
  name: string
  url: string
  port: number
  requests: RecordedRequest[]
  /** Health answers 200 while true, 503 when false. */
  healthy: boolean
  /** Count of /health probes received. */
  probes: number
  handler: Handler
  close(): Promise<void>
  /** Destroys all sockets and closes the port at once. */
  kill(): Promise<void>
  /** Listens again on the same port after kill(). */
  revive(): Promise<void>
}

/** Answers JSON `{ name, method, url, headers, body }`. */
export function echo (name: string): Handler {
  return (req, res, body) => json(res, 200, { name, method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') })
}

export function json (res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const s = JSON.stringify(value)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), ...headers })
  res.end(s)
}

export async function startUpstream (name: string, handler?: Handler, port = 0): Promise<TestUpstream> {
  const sockets = new Set<Socket>()
  let server: Server
  const up: TestUpstream = {
    name,
    url: '',
    port: 0,
    requests: [],
    healthy: true,
    probes: 0,
    handler: handler ?? echo(name),
    close: async () => {
      for (const s of sockets) s.destroy()
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()))
    },
    kill: async () => up.close(),
    revive: async () => listen(up.port)
  }
  const make = (): Server => {
    const s = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        if (req.url === '/health') {
          up.probes++
          json(res, up.healthy ? 200 : 503, { status: up.healthy ? 'ok' : 'down', name })
          return
        }
        up.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
        up.handler(req, res, body)
      })
    })
    s.on('connection', (sock) => {
      sockets.add(sock)
      sock.on('close', () => sockets.delete(sock))
    })
    return s
  }
  const listen = (p: number): Promise<void> => new Promise((resolve, reject) => {
    server = make()
    server.once('error', reject)
    server.listen(p, '127.0.0.1', () => {
      server.off('error', reject)
      up.port = (server.address() as AddressInfo).port
      up.url = `http://127.0.0.1:${up.port}`
      resolve()
    })
  })
  await listen(port)
  return up
}

/** A free loopback port nothing listens on (connections to it are refused). */
export async function deadPort (): Promise<number> {
  const s = createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()))
  const port = (s.address() as AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}
