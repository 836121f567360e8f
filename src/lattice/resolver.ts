/**
 * VPC Lattice origins: `{ lattice: { service, port, protocol, auth } }`
 * resolved to a base URL through the Lattice control plane (SPEC §8).
 *
 * One target per distinct service identifier (origins naming the same
 * service share one lookup), each a small state machine:
 *
 *   pending --ok--> resolved --fail--> stale --ok--> resolved
 *      \--fail--> pending (retried)          (a new domain moves the origins)
 *
 * - `pending`: never resolved; its origins have no address and count as
 *   unhealthy (the registry starts them so), which failover and `/readyz`
 *   already understand.
 * - `resolved`: `origin.setUrl()` points the origins at
 *   `protocol://domain[:port]`; a later change of domain swaps their pools
 *   (in-flight requests finish on the old one).
 * - `stale`: a refresh failed after a success; the last known address is
 *   kept (a control-plane hiccup must not take working origins out).
 *
 * Lookups run at start and every `lattice.refreshIntervalMs`; a failure is
 * retried with capped exponential backoff, never more than the refresh
 * interval apart. Nothing here throws past a timer or exits the process;
 * each transition is logged once.
 *
 * The domain is the custom domain name when the service has one, else the
 * Lattice-generated `dnsEntry.domainName`. GetService takes an id or an
 * ARN; a name is looked up once with ListServices and its id remembered
 * (looked up again if the service is gone, e.g. re-created).
 */
import {
  VPCLatticeClient, GetServiceCommand, ListServicesCommand, ResourceNotFoundException,
  type VPCLatticeClientConfig, type GetServiceCommandOutput
} from '@aws-sdk/client-vpc-lattice'
import type { Logger } from 'pino'
import type { SignatureV4 } from '@smithy/signature-v4'
import type { GatewayConfig, LatticeConfig, LatticeOrigin, OriginSpec } from '../config/schema.js'
import type { DispatcherDecorator, Origin } from '../upstream/origin.js'
import { createLatticeSigner, sigv4Interceptor } from './sigv4.js'

export interface LatticeOptions {
  /** Credentials or a provider; default: the AWS SDK's standard provider chain. */
  credentials?: VPCLatticeClientConfig['credentials']
  /** First retry delay after a failed lookup (doubles up to `refreshIntervalMs`). */
  retryBaseMs?: number
}

type TargetState = 'pending' | 'resolved' | 'stale'

/** One service identifier and the origins that name it. */
interface Target {
  identifier: string
  kind: 'arn' | 'id' | 'name'
  /** For a name: the service id found by ListServices, once found. */
  serviceId: string | null
  state: TargetState
  domain: string | null
  failures: number
  /** The kind of the last logged failure, so a repeat is not logged again. */
  lastFailure: string | null
  timer: NodeJS.Timeout | null
  origins: Array<{ origin: Origin, lattice: LatticeOrigin }>
}

const SERVICE_ID = /^svc-[0-9a-z]{17}$/
const HOST_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/
const NO_REGION = 'no AWS region for VPC Lattice: set lattice.region in the config, or AWS_REGION in the environment'

/** `protocol://domain[:port]`, the port left out when it is the protocol's default. */
export function latticeUrl (domain: string, lattice: LatticeOrigin): string {
  const protocol = lattice.protocol
  const port = lattice.port ?? (protocol === 'https' ? 443 : 80)
  const isDefault = (protocol === 'https' && port === 443) || (protocol === 'http' && port === 80)
  return `${protocol}://${domain}${isDefault ? '' : `:${port}`}`
}

export class LatticeResolver {
  readonly client: VPCLatticeClient
  readonly signer: SignatureV4
  readonly #logger: Logger
  readonly #refreshMs: number
  readonly #retryBaseMs: number
  readonly #lookupTimeoutMs: number
  readonly #targets = new Map<string, Target>()
  readonly #inflight = new Set<AbortController>()
  #closed = false

  constructor (config: LatticeConfig, logger: Logger, opts: LatticeOptions = {}) {
    this.#logger = logger.child({ component: 'lattice' })
    this.#refreshMs = config.refreshIntervalMs
    this.#retryBaseMs = Math.min(opts.retryBaseMs ?? 200, config.refreshIntervalMs)
    this.#lookupTimeoutMs = Math.min(10000, Math.max(1000, config.refreshIntervalMs))
    // Region, endpoint and credentials not in the config come from the
    // SDK's own chains (AWS_REGION, AWS_ENDPOINT_URL_VPC_LATTICE, profiles,
    // container and instance roles).
    this.client = new VPCLatticeClient({
      ...(config.region === undefined ? {} : { region: config.region }),
      ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint }),
      ...(opts.credentials === undefined ? {} : { credentials: opts.credentials }),
      // The resolver's own backoff is the retry policy.
      maxAttempts: 1
    })
    // Signatures use the client's region and its (caching) credential
    // provider, called per signature so rotations are picked up.
    this.signer = createLatticeSigner({ region: this.client.config.region, credentials: this.client.config.credentials })
  }

  /** `RegistryOptions.decorate`: signs every request of an `auth: iam` origin. */
  readonly decorate = (spec: OriginSpec): DispatcherDecorator | undefined => {
    if (typeof spec === 'string' || spec.lattice.auth !== 'iam') return undefined
    return (dispatcher, url) => dispatcher.compose(sigv4Interceptor(this.signer, url))
  }

  /** Starts resolving the Lattice origins among `origins` (the registry's list). */
  start (origins: ReadonlyArray<{ origin: Origin, spec: OriginSpec }>): void {
    for (const { origin, spec } of origins) {
      if (typeof spec === 'string') continue
      const id = spec.lattice.service
      let t = this.#targets.get(id)
      if (t === undefined) {
        const kind = id.startsWith('arn:') ? 'arn' : SERVICE_ID.test(id) ? 'id' : 'name'
        t = { identifier: id, kind, serviceId: null, state: 'pending', domain: null, failures: 0, lastFailure: null, timer: null, origins: [] }
        this.#targets.set(id, t)
      }
      t.origins.push({ origin, lattice: spec.lattice })
    }
    for (const t of this.#targets.values()) void this.#refresh(t)
  }

  async close (): Promise<void> {
    this.#closed = true
    for (const t of this.#targets.values()) {
      if (t.timer !== null) clearTimeout(t.timer)
      t.timer = null
    }
    for (const ac of this.#inflight) ac.abort()
    this.client.destroy()
  }

  async #refresh (t: Target): Promise<void> {
    t.timer = null
    try {
      const domain = await this.#lookup(t)
      if (!this.#closed) this.#resolved(t, domain)
    } catch (err) {
      if (!this.#closed) this.#failed(t, err)
    }
  }

  #resolved (t: Target, domain: string): void {
    const urls = t.origins.map(({ origin, lattice }) => ({ origin, url: latticeUrl(domain, lattice) }))
    // Anything but a host name is a failed lookup, never a crash or a URL with a path in it.
    if (!HOST_NAME.test(domain)) throw Object.assign(new Error(`the service's domain name ${JSON.stringify(domain)} is not a host name`), { name: 'BadDomainName' })
    const before = t.state
    const from = t.domain
    t.state = 'resolved'
    t.domain = domain
    t.failures = 0
    t.lastFailure = null
    const fields = { event: 'lattice', service: t.identifier, state: 'resolved', domain, origins: urls.map((u) => `${u.origin.label} -> ${u.url}`) }
    if (before === 'pending') {
      this.#logger.info(fields, `Lattice service ${t.identifier} resolved to ${domain}`)
    } else if (from !== domain) {
      this.#logger.warn({ ...fields, from }, `Lattice service ${t.identifier} moved from ${from} to ${domain}`)
    } else if (before === 'stale') {
      this.#logger.info(fields, `Lattice service ${t.identifier}: lookups work again (${domain})`)
    }
    for (const { origin, url } of urls) origin.setUrl(url, `Lattice service ${t.identifier} resolved to ${domain}`)
    this.#schedule(t, this.#refreshMs)
  }

  #failed (t: Target, err: unknown): void {
    t.failures++
    const reason = describe(err)
    const kind = failureKind(err)
    const fields = { event: 'lattice', service: t.identifier, reason, ...(kind === 'NoRegion' ? { path: 'lattice.region' } : {}) }
    if (t.state === 'resolved') {
      t.state = 'stale'
      t.lastFailure = kind
      this.#logger.warn({ ...fields, state: 'stale', domain: t.domain }, `Lattice service ${t.identifier}: lookup failed, keeping the last known address ${t.domain} (${reason})`)
    } else if (t.state === 'pending' && t.lastFailure !== kind) {
      // The first failure of a never-resolved service, or a different one.
      t.lastFailure = kind
      for (const { origin } of t.origins) origin.setUrl(null, `Lattice service ${t.identifier} not resolved: ${reason}`)
      this.#logger.error({ ...fields, state: t.state }, `Lattice service ${t.identifier} not resolved: ${reason}`)
    } else {
      this.#logger.debug({ ...fields, state: t.state, failures: t.failures }, `Lattice service ${t.identifier}: lookup failed again`)
    }
    // Capped exponential backoff with jitter, never longer than the refresh interval.
    const exp = Math.min(this.#refreshMs, this.#retryBaseMs * 2 ** Math.min(t.failures - 1, 30))
    this.#schedule(t, Math.max(1, Math.round(exp * (0.5 + Math.random() * 0.5))))
  }

  #schedule (t: Target, ms: number): void {
    if (this.#closed) return
    t.timer = setTimeout(() => { void this.#refresh(t) }, ms)
    t.timer.unref()
  }

  /** One lookup: the domain the target's origins should use. Throws on any failure. */
  async #lookup (t: Target): Promise<string> {
    try {
      await this.client.config.region()
    } catch (err) {
      throw Object.assign(new Error(NO_REGION, { cause: err }), { name: 'NoRegion' })
    }
    let id = t.kind === 'name' ? t.serviceId : t.identifier
    if (id === null) id = await this.#findByName(t.identifier)
    let out: GetServiceCommandOutput
    try {
      const serviceIdentifier = id
      out = await this.#bounded((abortSignal) => this.client.send(new GetServiceCommand({ serviceIdentifier }), { abortSignal }))
    } catch (err) {
      // A name whose service is gone may now belong to a new service.
      if (t.kind === 'name' && err instanceof ResourceNotFoundException) t.serviceId = null
      throw err
    }
    if (t.kind === 'name') t.serviceId = out.id ?? id
    const domain = nonEmpty(out.customDomainName) ?? nonEmpty(out.dnsEntry?.domainName)
    if (domain === undefined) {
      throw Object.assign(new Error(`service has no DNS name yet (status ${out.status ?? 'unknown'}${out.failureMessage === undefined ? '' : `: ${out.failureMessage}`})`), { name: 'NoDnsName' })
    }
    return domain
  }

  /** The id of the one service called `name` (ListServices, every page). */
  async #findByName (name: string): Promise<string> {
    const found: string[] = []
    let nextToken: string | undefined
    do {
      const input = { maxResults: 100, ...(nextToken === undefined ? {} : { nextToken }) }
      const page = await this.#bounded((abortSignal) => this.client.send(new ListServicesCommand(input), { abortSignal }))
      for (const s of page.items ?? []) {
        if (s.name === name) {
          const id = s.id ?? s.arn
          if (id !== undefined) found.push(id)
        }
      }
      nextToken = nonEmpty(page.nextToken)
    } while (nextToken !== undefined)
    if (found.length === 0) throw Object.assign(new Error(`no service named "${name}" is visible to these credentials (ListServices)`), { name: 'NotFoundByName' })
    if (found.length > 1) throw Object.assign(new Error(`${found.length} services are named "${name}" (${found.join(', ')}); name one by id or ARN`), { name: 'AmbiguousName' })
    return found[0]!
  }

  /** Runs a control-plane call, bounded in time and aborted by close(). */
  async #bounded<R> (call: (abortSignal: AbortSignal) => Promise<R>): Promise<R> {
    const ac = new AbortController()
    const timer = setTimeout(() => ac.abort(), this.#lookupTimeoutMs)
    this.#inflight.add(ac)
    try {
      return await call(ac.signal)
    } finally {
      clearTimeout(timer)
      this.#inflight.delete(ac)
    }
  }
}

function nonEmpty (s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s
}

/** A stable key for "the same failure again": the error's name or code. */
function failureKind (err: unknown): string {
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code
    return typeof code === 'string' ? code : err.name
  }
  return 'Error'
}

function describe (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const status = (err as Error & { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode
  const name = err.name === 'Error' ? '' : `${err.name}: `
  return `${name}${err.message.split('\n')[0]}${status === undefined ? '' : ` (HTTP ${status})`}`
}
