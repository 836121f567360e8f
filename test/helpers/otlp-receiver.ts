/**
 * A real OTLP/HTTP trace receiver for tests: node:http on 127.0.0.1:0 that
 * accepts POST /v1/traces, decodes the JSON encoding (OTLP/JSON: hex ids,
 * numeric span kinds, typed attribute values) into flat spans, and keeps
 * protobuf bodies as raw bytes with their content type. Tests can make it
 * answer an error (`status`), hang (`hang`), or close the port (`close`).
 */
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { gunzipSync } from 'node:zlib'

export type AttrValue = string | number | boolean | null

export interface ReceivedSpan {
  traceId: string
  spanId: string
  /** '' for a root span. */
  parentSpanId: string
  name: string
  kind: 'INTERNAL' | 'SERVER' | 'CLIENT' | 'PRODUCER' | 'CONSUMER' | 'UNSPECIFIED'
  attributes: Record<string, AttrValue>
  events: Array<{ name: string, attributes: Record<string, AttrValue> }>
  /** 0 unset, 1 ok, 2 error. */
  statusCode: number
  resource: Record<string, AttrValue>
}

export interface ReceivedExport {
  contentType: string
  body: Buffer
}

export interface OtlpReceiver {
  /** The traces endpoint, http://127.0.0.1:port/v1/traces. */
  url: string
  spans: ReceivedSpan[]
  exports: ReceivedExport[]
  /** Status every export is answered with (200 by default). */
  status: number
  /** While true, exports are read and never answered. */
  hang: boolean
  /** Resolves once `pred` holds for the spans received (checked on every export). */
  waitFor(pred: (spans: ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>
  close(): Promise<void>
}

const KINDS: ReceivedSpan['kind'][] = ['UNSPECIFIED', 'INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER']

interface JsonAttr { key: string, value: Record<string, unknown> }

function attrs (list: JsonAttr[] | undefined): Record<string, AttrValue> {
  const out: Record<string, AttrValue> = {}
  for (const a of list ?? []) {
    const v = a.value
    if ('stringValue' in v) out[a.key] = String(v.stringValue)
    else if ('intValue' in v) out[a.key] = Number(v.intValue)
    else if ('doubleValue' in v) out[a.key] = Number(v.doubleValue)
    else if ('boolValue' in v) out[a.key] = Boolean(v.boolValue)
    else out[a.key] = null
  }
  return out
}

/** Flattens an OTLP/JSON ExportTraceServiceRequest. */
export function decodeJson (doc: unknown): ReceivedSpan[] {
  const out: ReceivedSpan[] = []
  const d = doc as { resourceSpans?: Array<{ resource?: { attributes?: JsonAttr[] }, scopeSpans?: Array<{ spans?: Array<Record<string, unknown>> }> }> }
  for (const rs of d.resourceSpans ?? []) {
    const resource = attrs(rs.resource?.attributes)
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: String(s.traceId),
          spanId: String(s.spanId),
          parentSpanId: typeof s.parentSpanId === 'string' ? s.parentSpanId : '',
          name: String(s.name),
          kind: KINDS[Number(s.kind ?? 0)] ?? 'UNSPECIFIED',
          attributes: attrs(s.attributes as JsonAttr[] | undefined),
          events: ((s.events ?? []) as Array<{ name: string, attributes?: JsonAttr[] }>).map((e) => ({ name: e.name, attributes: attrs(e.attributes) })),
          statusCode: Number((s.status as { code?: number } | undefined)?.code ?? 0),
          resource
        })
      }
    }
  }
  return out
}

/** Listens on `port` (0: any free one; a fixed one to bring a collector back where it was). */
export async function startOtlpReceiver (port = 0): Promise<OtlpReceiver> {
  const sockets = new Set<Socket>()
  const waiters: Array<{ pred: (s: ReceivedSpan[]) => boolean, resolve: (s: ReceivedSpan[]) => void }> = []
  const hanging: ServerResponse[] = []
  const rx: OtlpReceiver = {
    url: '',
    spans: [],
    exports: [],
    status: 200,
    hang: false,
    waitFor (pred, timeoutMs = 10000) {
      if (pred(rx.spans)) return Promise.resolve(rx.spans)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for spans (have ${rx.spans.length}: ${rx.spans.map((s) => s.name).join(', ')})`)), timeoutMs)
        waiters.push({ pred, resolve: (s) => { clearTimeout(timer); resolve(s) } })
      })
    },
    close: async () => {
      for (const r of hanging) r.destroy()
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      let body = Buffer.concat(chunks)
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body)
      const contentType = String(req.headers['content-type'] ?? '')
      rx.exports.push({ contentType, body })
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end()
        return
      }
      if (contentType.startsWith('application/json')) rx.spans.push(...decodeJson(JSON.parse(body.toString('utf8'))))
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (waiters[i]!.pred(rx.spans)) waiters.splice(i, 1)[0]!.resolve(rx.spans)
      }
      if (rx.hang) {
        hanging.push(res)
        return
      }
      res.writeHead(rx.status, { 'content-type': contentType.startsWith('application/json') ? 'application/json' : 'application/x-protobuf' })
      res.end(contentType.startsWith('application/json') ? '{}' : undefined)
    })
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()))
  rx.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`
  return rx
}
