/**
 * A fake VPC Lattice control plane for tests: a real node:http server on
 * 127.0.0.1:0 speaking the restJson1 shapes the AWS SDK client uses, so the
 * gateway's real `@aws-sdk/client-vpc-lattice` client talks to it over a
 * socket (point `lattice.endpoint` or AWS_ENDPOINT_URL_VPC_LATTICE at `url`).
 *
 *   GET /services/{id or ARN}  -> GetService: {id, name, arn, dnsEntry, customDomainName?, authType, status, ...}
 *   GET /services              -> ListServices: {items: [...], nextToken?} (pages of `pageSize`)
 *   errors                     -> status + `x-amzn-errortype` header + {message}
 *
 * Like the real API, GetService accepts an id or an ARN only (a name is a
 * ValidationException). Tests change the services at any time, make every
 * call fail (`failWith`), and read the calls made (`calls`).
 *
 * Also here: `verifySigV4()`, an independent check of a SigV4 signature a
 * test upstream received (re-signs the request with the same credentials).
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { SignatureV4 } from '@smithy/signature-v4'
import { Hash } from '@smithy/core/serde'

export const ACCOUNT = '123456789012'

export interface FakeService {
  id: string
  name: string
  arn: string
  /** The Lattice-generated name; null: not assigned yet (e.g. CREATE_IN_PROGRESS). */
  domainName: string | null
  customDomainName?: string
  authType: 'NONE' | 'AWS_IAM'
  status: 'ACTIVE' | 'CREATE_IN_PROGRESS' | 'DELETE_IN_PROGRESS' | 'CREATE_FAILED' | 'DELETE_FAILED'
}

/** What every call answers while set: an AWS error, garbage, or a dropped connection. */
export type Failure =
  | { status: number, type: string, message?: string }
  | { garbage: string }
  | 'reset'

export interface FakeCall {
  method: string
  url: string
  headers: IncomingHttpHeaders
}

export interface FakeLattice {
  /** The endpoint, e.g. http://127.0.0.1:4566. */
  url: string
  region: string
  /** Services by id; change them freely. */
  services: Map<string, FakeService>
  /** ListServices page size. */
  pageSize: number
  /** While set, every call fails this way. */
  failWith: Failure | null
  calls: FakeCall[]
  /** Adds a service; the id and ARN are generated from the name. */
  add(s: { name: string, domainName?: string | null, customDomainName?: string, authType?: FakeService['authType'], status?: FakeService['status'] }): FakeService
  close(): Promise<void>
}

const ID = /^svc-[0-9a-z]{17}$/
const ARN = /^arn:[a-z0-9-]+:vpc-lattice:[a-zA-Z0-9-]+:\d{12}:service\/(svc-[0-9a-z]{17})$/

export async function startFakeLattice (region = 'us-east-1'): Promise<FakeLattice> {
  const sockets = new Set<Socket>()
  let seq = 0
  const fake: FakeLattice = {
    url: '',
    region,
    services: new Map(),
    pageSize: 100,
    failWith: null,
    calls: [],
    add (s) {
      const id = `svc-${(seq++).toString(36).padStart(4, '0')}${'0'.repeat(13)}`
      const svc: FakeService = {
        id,
        name: s.name,
        arn: `arn:aws:vpc-lattice:${region}:${ACCOUNT}:service/${id}`,
        domainName: s.domainName === undefined ? `${s.name}-${id.slice(4, 11)}.7d67968.vpc-lattice-svcs.${region}.on.aws` : s.domainName,
        authType: s.authType ?? 'NONE',
        status: s.status ?? 'ACTIVE',
        ...(s.customDomainName === undefined ? {} : { customDomainName: s.customDomainName })
      }
      fake.services.set(id, svc)
      return svc
    },
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }

  const server: Server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      fake.calls.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers })
      const send = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
        const s = JSON.stringify(body)
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), 'x-amzn-requestid': `req-${fake.calls.length}`, ...headers })
        res.end(s)
      }
      const error = (status: number, type: string, message: string, extra: Record<string, unknown> = {}): void =>
        send(status, { message, ...extra }, { 'x-amzn-errortype': `${type}:http://internal.amazon.com/coral/com.amazonaws.mercury/` })

      const f = fake.failWith
      if (f === 'reset') {
        req.socket.destroy()
        return
      }
      if (f !== null && 'garbage' in f) {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(f.garbage)
        return
      }
      if (f !== null) {
        error(f.status, f.type, f.message ?? `${f.type} (injected by the test)`)
        return
      }
      if (typeof req.headers.authorization !== 'string' || !req.headers.authorization.startsWith('AWS4-HMAC-SHA256 ')) {
        error(403, 'AccessDeniedException', 'missing authentication token')
        return
      }
      const u = new URL(req.url ?? '/', 'http://fake')
      const parts = u.pathname.split('/').filter((p) => p !== '')
      if (req.method === 'GET' && parts.length === 1 && parts[0] === 'services') {
        const all = [...fake.services.values()]
        const start = Number(u.searchParams.get('nextToken') ?? '0')
        const size = Math.min(fake.pageSize, Number(u.searchParams.get('maxResults') ?? '100'))
        const items = all.slice(start, start + size).map((s) => ({ ...shape(s), authType: undefined }))
        send(200, { items, ...(start + size < all.length ? { nextToken: String(start + size) } : {}) })
        return
      }
      if (req.method === 'GET' && parts.length === 2 && parts[0] === 'services') {
        const ident = decodeURIComponent(parts[1]!)
        const id = ID.test(ident) ? ident : ARN.exec(ident)?.[1]
        if (id === undefined) {
          error(400, 'ValidationException', `1 validation error detected: Value '${ident}' at 'serviceIdentifier' failed to satisfy constraint`, { reason: 'fieldValidationFailed' })
          return
        }
        const svc = fake.services.get(id)
        if (svc === undefined) {
          error(404, 'ResourceNotFoundException', `Service ${ident} not found`, { resourceId: ident, resourceType: 'SERVICE' })
          return
        }
        send(200, shape(svc))
        return
      }
      error(404, 'UnknownOperationException', `no route for ${req.method} ${u.pathname}`)
    })
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return fake
}

function shape (s: FakeService): Record<string, unknown> {
  const now = new Date('2025-01-01T00:00:00Z').toISOString()
  return {
    id: s.id,
    name: s.name,
    arn: s.arn,
    createdAt: now,
    lastUpdatedAt: now,
    ...(s.domainName === null ? {} : { dnsEntry: { domainName: s.domainName, hostedZoneId: 'Z0123456789ABCDEFGHIJ' } }),
    ...(s.customDomainName === undefined ? {} : { customDomainName: s.customDomainName }),
    authType: s.authType,
    status: s.status
  }
}

export interface Credentials {
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
}

export interface SigV4Check {
  valid: boolean
  /** Why not, when not valid. */
  problem: string | null
  received: string
  expected: string
  signedHeaders: string[]
  /** date/region/service/aws4_request */
  scope: string
  accessKeyId: string
}

/**
 * Recomputes the SigV4 signature of a received request (method, url, the
 * headers it lists as signed, its x-amz-date) with `credentials`, and
 * compares it with the request's Authorization header.
 */
export async function verifySigV4 (req: { method: string, url: string, headers: IncomingHttpHeaders }, credentials: Credentials, region: string, service = 'vpc-lattice-svcs'): Promise<SigV4Check> {
  const received = typeof req.headers.authorization === 'string' ? req.headers.authorization : ''
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8}\/[^/]+\/[^/]+\/aws4_request), SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$/.exec(received)
  const out: SigV4Check = { valid: false, problem: null, received, expected: '', signedHeaders: [], scope: '', accessKeyId: '' }
  if (m === null) return { ...out, problem: 'no SigV4 Authorization header' }
  out.accessKeyId = m[1]!
  out.scope = m[2]!
  out.signedHeaders = m[3]!.split(';')
  const amzDate = req.headers['x-amz-date']
  if (typeof amzDate !== 'string') return { ...out, problem: 'no x-amz-date' }
  const d = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate)
  if (d === null) return { ...out, problem: `bad x-amz-date ${amzDate}` }
  const signingDate = new Date(Date.UTC(+d[1]!, +d[2]! - 1, +d[3]!, +d[4]!, +d[5]!, +d[6]!))
  const headers: Record<string, string> = {}
  for (const h of out.signedHeaders) {
    const v = req.headers[h]
    if (v === undefined) return { ...out, problem: `signed header ${h} not received` }
    headers[h] = Array.isArray(v) ? v.join(',') : v
  }
  const u = new URL(req.url, 'http://verify')
  const query: Record<string, string | string[]> = {}
  for (const [k, v] of u.searchParams) {
    const prev = query[k]
    query[k] = prev === undefined ? v : ([] as string[]).concat(prev, v)
  }
  const signer = new SignatureV4({ service, region, credentials, sha256: Hash.bind(null, 'sha256'), uriEscapePath: true, applyChecksum: false })
  const signed = await signer.sign({ method: req.method, protocol: 'http:', hostname: headers.host ?? '', path: u.pathname, query, headers }, { signingDate })
  out.expected = String(signed.headers.authorization ?? signed.headers.Authorization)
  out.valid = out.expected === received
  if (!out.valid) out.problem = 'signature mismatch'
  return out
}
