/**
 * The configuration file's schema (SPEC §3), with its defaults.
 *
 * TypeBox gives both the JSON schema the loader validates against and the
 * static types the rest of the gateway reads. Every object is closed
 * (`additionalProperties: false`) so a typo is an error at its own path;
 * so are the maps of names (services, deployments, sections): without it a
 * name outside the pattern is not an error but a key TypeBox never checks.
 * Unions (an origin is a URL or a Lattice reference; a route is a proxy or
 * an aggregate) are validated by the loader branch by branch, so their
 * errors name the branch the user meant.
 */
import { Type, type Static, type TInteger, type TObject, type TProperties } from '@sinclair/typebox'

const closed = <T extends TProperties>(props: T, opts: { default?: unknown, description?: string } = {}): TObject<T> =>
  Type.Object(props, { additionalProperties: false, ...opts })

const Ms = (min: number, def: number): TInteger => Type.Integer({ minimum: min, default: def })
const Port = (def: number): TInteger => Type.Integer({ minimum: 0, maximum: 65535, default: def })

export const HTTP_METHODS = ['GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH', 'DELETE'] as const

export const ServerSchema = closed({
  host: Type.String({ default: '0.0.0.0', minLength: 1 }),
  port: Port(8080),
  bodyLimitBytes: Type.Integer({ minimum: 0, default: 1048576 }),
  shutdownGraceMs: Ms(0, 10000),
  /** Slow clients: whole request (Node's `requestTimeout`) and headers alone. */
  requestTimeoutMs: Ms(1, 30000),
  headersTimeoutMs: Ms(1, 10000),
  keepAliveTimeoutMs: Ms(1, 72000),
  maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1048576, default: 16384 }),
  maxUrlLength: Type.Integer({ minimum: 64, default: 8192 }),
  // --- hardening: request limits, path policy, load shedding (README "Limits") ---
  /** More request headers than this: 431. */
  maxHeaderCount: Type.Integer({ minimum: 1, maximum: 10000, default: 100 }),
  /** `%2F` in a path: `reject` (400) or `keep` (forwarded encoded, never decoded). */
  encodedSlashes: Type.Union([Type.Literal('reject'), Type.Literal('keep')], { default: 'reject' }),
  /** Requests in progress on the public listener before 503 GW_OVERLOADED; 0: no limit. */
  maxInFlight: Type.Integer({ minimum: 0, default: 10000 }),
  /** Mean event-loop delay over a sample that makes the gateway shed load; 0: off. */
  maxEventLoopDelayMs: Type.Integer({ minimum: 0, default: 1000 }),
  /** V8 heap in use that makes the gateway shed load; 0: off. */
  maxHeapUsedBytes: Type.Integer({ minimum: 0, default: 0 }),
  /** How often event-loop delay and heap are sampled. */
  loadSampleIntervalMs: Ms(10, 1000),
  /** `Retry-After` (seconds) on every 503 GW_OVERLOADED. */
  retryAfterSeconds: Type.Integer({ minimum: 0, default: 1 }),
  // --- end hardening ---
  // --- hostile clients (SPEC §17, README "Hostile clients") ---
  /** Request bodies up to this size are read in full before any origin is contacted; larger ones are streamed. */
  requestBufferBytes: Type.Integer({ minimum: 0, default: 65536 }),
  /** How long the gateway waits for a request body: the whole of a buffered one, the gap between two chunks of a streamed one. Then 408 GW_CLIENT_TIMEOUT. */
  clientBodyTimeoutMs: Ms(1, 10000),
  // --- end hostile clients ---
  /** Worker processes sharing the public port (node:cluster); `auto`: one per core. 1: no cluster at all. */
  workers: Type.Union([Type.Integer({ minimum: 1 }), Type.Literal('auto')], { default: 1 }),
  logLevel: Type.Union([Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'), Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')], { default: 'info' })
}, { default: {} })

export const AdminSchema = closed({
  host: Type.String({ default: '127.0.0.1', minLength: 1 }),
  port: Port(9901),
  token: Type.String({ default: '' })
}, { default: {} })

export const LatticeSchema = closed({
  region: Type.Optional(Type.String({ minLength: 1 })),
  endpoint: Type.Optional(Type.String({ format: 'uri', minLength: 1 })),
  refreshIntervalMs: Ms(100, 60000)
}, { default: {} })

export const LatticeOriginSchema = closed({
  lattice: closed({
    service: Type.String({ minLength: 1, description: 'name, id or ARN' }),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
    protocol: Type.Union([Type.Literal('http'), Type.Literal('https')], { default: 'https' }),
    auth: Type.Union([Type.Literal('none'), Type.Literal('iam')], { default: 'none' })
  })
})

export const OriginUrlSchema = Type.String({ minLength: 1 })

/** An origin as written: a URL or a Lattice reference. */
export type OriginSpec = string | Static<typeof LatticeOriginSchema>

export const DeploymentSchema = closed({
  primary: Type.Unknown(),
  secondary: Type.Optional(Type.Unknown())
})

const StatusCode = Type.Integer({ minimum: 100, maximum: 599 })
const Method = Type.Union(HTTP_METHODS.map((m) => Type.Literal(m)))

/** A service's rollout settings (SPEC §11); also the shape of a start request's overrides. */
export const RolloutSchema = closed({
  /** The candidate's weight at each step: increasing, 1-100, the last 100. */
  steps: Type.Array(Type.Integer({ minimum: 1, maximum: 100 }), { default: [5, 25, 50, 100], minItems: 1 }),
  stepIntervalMs: Ms(10, 60000),
  analysis: closed({
    minRequests: Type.Integer({ minimum: 1, default: 50 }),
    maxErrorRate: Type.Number({ minimum: 0, maximum: 1, default: 0.01 }),
    maxP99Ratio: Type.Number({ exclusiveMinimum: 0, default: 1.5 })
  }, { default: {} }),
  failureLimit: Type.Integer({ minimum: 1, default: 1 }),
  shield: Type.Boolean({ default: true })
})

export type RolloutConfig = Static<typeof RolloutSchema>

/** SPEC §11's rollout defaults, for a service whose config has no `rollout` block. */
export const ROLLOUT_DEFAULTS: Readonly<RolloutConfig> = Object.freeze({
  steps: [5, 25, 50, 100],
  stepIntervalMs: 60000,
  analysis: { minRequests: 50, maxErrorRate: 0.01, maxP99Ratio: 1.5 },
  failureLimit: 1,
  shield: true
})

export const ServiceSchema = closed({
  timeoutMs: Ms(1, 2000),
  retry: closed({
    methods: Type.Array(Method, { default: ['GET', 'HEAD', 'OPTIONS'], uniqueItems: true }),
    onStatus: Type.Array(StatusCode, { default: [500, 502, 503, 504], uniqueItems: true })
  }, { default: {} }),
  healthCheck: closed({
    path: Type.String({ pattern: '^/', default: '/health' }),
    intervalMs: Ms(50, 1000),
    timeoutMs: Ms(1, 500),
    unhealthyThreshold: Type.Integer({ minimum: 1, default: 2 }),
    healthyThreshold: Type.Integer({ minimum: 1, default: 2 })
  }, { default: {} }),
  circuitBreaker: closed({
    errorThresholdPercentage: Type.Number({ exclusiveMinimum: 0, maximum: 100, default: 50 }),
    volumeThreshold: Type.Integer({ minimum: 1, default: 10 }),
    resetTimeoutMs: Ms(10, 5000),
    /** Rolling window the error percentage is computed over. */
    windowMs: Ms(100, 10000)
  }, { default: {} }),
  failback: Type.Union([Type.Literal('auto'), Type.Literal('manual')], { default: 'auto' }),
  /** Upstream sockets per origin: a bulkhead so one slow service cannot take them all. */
  maxConnections: Type.Integer({ minimum: 1, default: 256 }),
  /** Requests waiting for one of those sockets, per origin, before 503 GW_OVERLOADED (hardening). */
  maxQueued: Type.Integer({ minimum: 0, default: 256 }),
  origins: Type.Optional(DeploymentSchema),
  deployments: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z0-9_.-]+$' }), DeploymentSchema, { additionalProperties: false })),
  traffic: Type.Optional(Type.Record(Type.String(), Type.Integer({ minimum: 0 }))),
  sticky: Type.Optional(closed({
    header: Type.Optional(Type.String({ minLength: 1 })),
    cookie: Type.Optional(Type.String({ minLength: 1 }))
  })),
  // --- rollouts (SPEC §11) ---
  /** Progressive delivery: the defaults a rollout starts with (its POST body may override them). */
  rollout: Type.Optional(RolloutSchema),
  /** Reach a named deployment whatever its weight. */
  preview: Type.Optional(closed({
    header: Type.String({ minLength: 1, default: 'x-preview-deployment' }),
    token: Type.Optional(Type.String())
  }))
  // --- end rollouts ---
})

export const ProxyRouteSchema = closed({
  type: Type.Literal('proxy'),
  prefix: Type.String({ pattern: '^/' }),
  service: Type.String({ minLength: 1 }),
  rewritePrefix: Type.Optional(Type.String({ pattern: '^(/.*)?$' })),
  /** An upstream answer larger than this is refused (502) or cut; 0: no limit (answers stream, memory stays bounded). */
  maxResponseBytes: Type.Integer({ minimum: 0, default: 0 })
})

export const SectionSchema = closed({
  service: Type.String({ minLength: 1 }),
  path: Type.String({ pattern: '^/' }),
  required: Type.Boolean({ default: false })
}, { default: {} }) // a default marks it for TypeBox to fill defaults inside Record values

export const AggregateRouteSchema = closed({
  type: Type.Literal('aggregate'),
  method: Type.Union([Type.Literal('GET'), Type.Literal('HEAD')], { default: 'GET' }),
  path: Type.String({ pattern: '^/' }),
  timeoutMs: Ms(1, 1500),
  /** Client headers passed on to every section call (lower-cased). */
  forwardHeaders: Type.Array(Type.String({ minLength: 1 }), { default: ['authorization', 'accept-language'] }),
  /** A section answer larger than this is a failed section. */
  maxSectionBytes: Type.Integer({ minimum: 1, default: 1048576 }),
  sections: Type.Record(Type.String({ pattern: '^[A-Za-z0-9_-]+$' }), SectionSchema, { additionalProperties: false })
})

/** SPEC §10: replicas with the same url and name share one control state. */
export const FleetSchema = closed({
  /** postgres://user:pass@host:5432/db — a secret: never logged (the password is redacted). */
  url: Type.String({ pattern: '^postgres(ql)?://', description: 'postgres://user:pass@host:5432/db' }),
  name: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,100}$', default: 'default' }),
  /** How long an admin change waits for every live replica to apply it. */
  applyTimeoutMs: Ms(1, 3000),
  /** A replica is live while its last heartbeat is < 3 x heartbeatMs old. */
  heartbeatMs: Ms(10, 1000)
})

export const TopSchema = closed({
  server: ServerSchema,
  admin: AdminSchema,
  lattice: LatticeSchema,
  fleet: Type.Optional(FleetSchema),
  services: Type.Record(Type.String({ pattern: '^[A-Za-z0-9_.-]+$' }), Type.Unknown(), { default: {}, additionalProperties: false }),
  routes: Type.Array(Type.Unknown(), { default: [] })
})

export type ServerConfig = Static<typeof ServerSchema> & { logLevel: string }
export type AdminConfig = Static<typeof AdminSchema>
export type LatticeConfig = Static<typeof LatticeSchema>
export type FleetConfig = Static<typeof FleetSchema>
export type LatticeOrigin = Static<typeof LatticeOriginSchema>['lattice']
type ServiceRaw = Static<typeof ServiceSchema>
export type ProxyRoute = Static<typeof ProxyRouteSchema>
export type AggregateRoute = Static<typeof AggregateRouteSchema>
export type SectionConfig = Static<typeof SectionSchema>
export type RouteConfig = ProxyRoute | AggregateRoute

/** One deployment after validation: a primary and an optional secondary. */
export interface DeploymentConfig {
  primary: OriginSpec
  secondary?: OriginSpec
}

/** A service after validation: the short `origins` form becomes deployment "default". */
export type ServiceConfig = Omit<ServiceRaw, 'origins' | 'deployments' | 'traffic'> & {
  deployments: Record<string, DeploymentConfig>
  traffic: Record<string, number>
}

/** The whole validated, defaulted and frozen configuration. */
export interface GatewayConfig {
  server: ServerConfig
  admin: AdminConfig
  lattice: LatticeConfig
  /** Absent: each process keeps its own control state. */
  fleet?: FleetConfig
  services: Record<string, ServiceConfig>
  routes: RouteConfig[]
}
