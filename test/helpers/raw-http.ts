/**
 * Raw HTTP over `net`, for requests no well-behaved client would send
 * (dot-segments, smuggling attempts, bytes trickled slowly) and for
 * upstreams that answer with broken HTTP.
 */
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net'

export interface RawAnswer {
  /** Everything the server sent. */
  raw: string
  /** Status of the first response, or null when none was received. */
  status: number | null
  /** Headers of the first response, names lower-cased. */
  headers: Record<string, string>
  /** Body of the first response (by content-length, else the rest). */
  body: string
  /** How the connection ended: the server closed it, reset it, or we gave up waiting. */
  ended: 'closed' | 'reset' | 'timeout'
  /** Milliseconds from connect to the end. */
  ms: number
}

/** Sends `data` (or each chunk of it, `gapMs` apart) and reads until the server closes. */
export function rawRequest (url: string, data: string | Buffer | Array<string | Buffer>, opts: { timeoutMs?: number, gapMs?: number } = {}): Promise<RawAnswer> {
  const { port } = new URL(url)
  const chunks = Array.isArray(data) ? data : [data]
  return new Promise((resolve) => {
    const t0 = Date.now()
    const received: Buffer[] = []
    const sock = connect(Number(port), '127.0.0.1')
    let ended: RawAnswer['ended'] = 'closed'
    let timer: NodeJS.Timeout | null = null
    const timeout = setTimeout(() => {
      ended = 'timeout'
      sock.destroy()
    }, opts.timeoutMs ?? 5000)
    sock.on('connect', () => {
      let i = 0
      const next = (): void => {
        if (i >= chunks.length || sock.destroyed) return
        sock.write(chunks[i++]!, () => {})
        if (i < chunks.length) timer = setTimeout(next, opts.gapMs ?? 0)
      }
      next()
    })
    sock.on('data', (c: Buffer) => received.push(c))
    sock.on('error', (err: NodeJS.ErrnoException) => { if (ended !== 'timeout' && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) ended = 'reset' })
    sock.on('close', () => {
      clearTimeout(timeout)
      if (timer !== null) clearTimeout(timer)
      resolve(parse(Buffer.concat(received).toString('latin1'), ended, Date.now() - t0))
    })
  })
}

/** Parses the first response out of raw bytes. */
export function parse (raw: string, ended: RawAnswer['ended'], ms: number): RawAnswer {
  const headerEnd = raw.indexOf('\r\n\r\n')
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw)
  const headers: Record<string, string> = {}
  if (m === null || headerEnd === -1) return { raw, status: null, headers, body: '', ended, ms }
  for (const line of raw.slice(0, headerEnd).split('\r\n').slice(1)) {
    const c = line.indexOf(':')
    if (c > 0) headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim()
  }
  let body = raw.slice(headerEnd + 4)
  if (headers['content-length'] !== undefined) body = body.slice(0, Number(headers['content-length']))
  return { raw, status: Number(m[1]), headers, body, ended, ms }
}

/** `GET path` with `Connection: close` and any extra header lines. */
export function get (path: string, extra: string[] = []): string {
  return [`GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', ...extra, 'Connection: close', '', ''].join('\r\n')
}

export interface RawUpstream {
  url: string
  /** Requests (raw head and body bytes) received, in order. */
  received: string[]
  /** Connections accepted. */
  connections: number
  close(): Promise<void>
}

/**
 * A raw TCP "HTTP server" for broken-upstream tests: `onRequest` gets the
 * socket once a whole request head has arrived (health probes get a
 * correct 200 so the origin stays healthy).
 */
export async function startRawUpstream (onRequest: (sock: Socket, head: string) => void): Promise<RawUpstream> {
  const sockets = new Set<Socket>()
  const up: RawUpstream = { url: '', received: [], connections: 0, close: async () => {} }
  const server: Server = createServer((sock) => {
    up.connections++
    sockets.add(sock)
    sock.on('close', () => sockets.delete(sock))
    sock.on('error', () => {})
    let buf = ''
    sock.on('data', (c: Buffer) => {
      buf += c.toString('latin1')
      let end
      while ((end = buf.indexOf('\r\n\r\n')) !== -1) {
        const head = buf.slice(0, end)
        buf = buf.slice(end + 4)
        if (head.startsWith('GET /health ')) {
          sock.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}')
          continue
        }
        up.received.push(head)
        onRequest(sock, head)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  up.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  up.close = async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  return up
}
