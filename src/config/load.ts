/**
 * Config loading: file -> `${VAR}` substitution -> YAML/JSON -> defaults ->
 * validation -> cross-checks -> one frozen object.
 *
 * Every problem is collected, not only the first, and reported with its
 * path in the file (`services.product.healthCheck.intervalMs: must be >= 50`)
 * so an operator fixes a broken file in one pass. This runs once at start;
 * nothing here is on the request path.
 */
import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import { parse as parseYaml } from 'yaml'
import type { TSchema } from '@sinclair/typebox'
import { FormatRegistry } from '@sinclair/typebox'
import { Value, ValueErrorType, type ValueError } from '@sinclair/typebox/value'
import {
  TopSchema, ServiceSchema, DeploymentSchema, LatticeOriginSchema, OriginUrlSchema,
  ProxyRouteSchema, AggregateRouteSchema,
  type GatewayConfig, type ServiceConfig, type RouteConfig, type DeploymentConfig, type OriginSpec
} from './schema.js'

// TypeBox knows no string formats until they are registered; without this
// every `format: 'uri'` value fails with "Unknown format".
if (!FormatRegistry.Has('uri')) FormatRegistry.Set('uri', (v) => URL.canParse(v))

/** One problem in a config file. */
export interface ConfigIssue {
  path: string
  message: string
}

/** Thrown when a config cannot be used; carries every issue found. */
export class ConfigError extends Error {
  readonly issues: ConfigIssue[]
  constructor (issues: ConfigIssue[], source = 'config') {
    super(`${source}: ${issues.length} error${issues.length === 1 ? '' : 's'}\n` + issues.map((i) => `  ${i.path === '' ? '(top)' : i.path}: ${i.message}`).join('\n'))
    this.name = 'ConfigError'
    this.issues = issues
  }
}

/** Replaces `${VAR}` and `${VAR:-default}` in the file's text (unset without default: empty). */
export function substituteEnv (text: string, env: NodeJS.ProcessEnv = process.env): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_m, name: string, def: string | undefined) => {
    const value = env[name]
    if (value !== undefined && value !== '') return value
    return def ?? ''
  })
}

/** Reads, substitutes, parses and validates a config file. Throws ConfigError. */
export function loadConfigFile (file: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const reason = err instanceof Error && 'code' in err ? String(err.code) : 'unreadable'
    throw new ConfigError([{ path: '', message: `cannot read config file ${file} (${reason})` }], file)
  }
  let raw: unknown
  const substituted = substituteEnv(text, env)
  try {
    raw = extname(file).toLowerCase() === '.json' ? JSON.parse(substituted) : emptyToString(parseYaml(substituted), true)
  } catch (err) {
    throw new ConfigError([{ path: '', message: `not valid ${extname(file).toLowerCase() === '.json' ? 'JSON' : 'YAML'}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}` }], file)
  }
  return validateConfig(raw, file)
}

/**
 * YAML reads a key with nothing after it (`token: ${UNSET}` once
 * substituted) as null; SPEC §3 says an unset variable is the empty string,
 * so empty values become '' (the document itself stays null: an empty file).
 */
function emptyToString (value: unknown, root = false): unknown {
  if (value === null) return root ? null : ''
  if (Array.isArray(value)) return value.map((v) => emptyToString(v))
  if (typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) (value as Record<string, unknown>)[k] = emptyToString(v)
  }
  return value
}

/** Validates an already-parsed config object (the loader's core; tests call it directly). */
export function validateConfig (raw: unknown, source = 'config'): GatewayConfig {
  const issues: ConfigIssue[] = []
  if (raw === null || raw === undefined) raw = {}
  if (!isMapping(raw)) throw new ConfigError([{ path: '', message: 'the config must be a mapping with services and routes' }], source)
  const doc = screen(raw, '', 0, issues, source) as Record<string, unknown>
  // The top level is checked for shape only; its parts are checked below
  // even when it has errors, so one run reports everything.
  check(TopSchema, doc, '', issues)
  // Defaults for server/admin/lattice only: services and routes are taken
  // from `doc` below, and a `routes` mapping with a `length` key would
  // break TypeBox's array defaulting (it is reported by the check above).
  const { services: _s, routes: _r, ...rest } = doc
  const top = Value.Default(TopSchema, structuredClone(rest)) as { server: GatewayConfig['server'], admin: GatewayConfig['admin'], lattice: GatewayConfig['lattice'], fleet?: GatewayConfig['fleet'] }
  // A `services` or `routes` of the wrong shape is reported by the check
  // above; nothing below reports again on its account.
  const servicesRaw = doc.services === undefined ? {} : isMapping(doc.services) ? doc.services : null
  const routesRaw: unknown[] = Array.isArray(doc.routes) ? doc.routes : []

  const services: Record<string, ServiceConfig> = {}
  for (const [name, svc] of Object.entries(servicesRaw ?? {})) {
    const s = compileService(name, svc, issues)
    if (s !== undefined) services[name] = s
  }
  if (servicesRaw !== null && Object.keys(servicesRaw).length === 0) issues.push({ path: 'services', message: 'at least one service is required' })

  const routes: RouteConfig[] = []
  const seen = new Map<string, string>()
  routesRaw.forEach((r, i) => {
    const path = `routes[${i}]`
    const route = compileRoute(r, path, issues)
    if (route === undefined) return
    const services_ = route.type === 'proxy' ? [[`${path}.service`, route.service]] : Object.entries(route.sections).map(([k, s]) => [`${path}.sections.${k}.service`, s.service])
    for (const [p, svc] of services_) {
      // Own names only: a route naming "constructor" is not a service.
      if (servicesRaw !== null && !Object.hasOwn(servicesRaw, svc!)) issues.push({ path: p!, message: `unknown service "${svc}" (defined: ${Object.keys(servicesRaw).join(', ') || 'none'})` })
    }
    const key = route.type === 'proxy' ? `prefix ${route.prefix.replace(/\/+$/, '') || '/'}` : `${route.method} ${normaliseTemplate(route.path)}`
    const prev = seen.get(key)
    if (prev !== undefined) issues.push({ path: `${path}.${route.type === 'proxy' ? 'prefix' : 'path'}`, message: `duplicate route: same ${key} as ${prev}` })
    else seen.set(key, path)
    routes.push(route)
  })

  // A value checked twice (a deployment inside its service, then alone) reports once.
  const unique = issues.filter((x, i) => issues.findIndex((y) => y.path === x.path && y.message === x.message) === i)
  if (unique.length > 0) throw new ConfigError(unique, source)
  return deepFreeze({ server: top.server, admin: top.admin, lattice: top.lattice, ...(top.fleet === undefined ? {} : { fleet: top.fleet }), services, routes })
}

const MAX_DEPTH = 32

/** A mapping: an object that is not a list (`typeof` says "object" for both, and for null). */
function isMapping (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Copies a parsed document, reporting and dropping every `__proto__` key
 * (names become object keys below, where it would vanish or replace a
 * prototype) and refusing a document nested deeper than any config needs
 * (the checks below recurse; a hostile depth would overflow the stack).
 */
function screen (value: unknown, path: string, depth: number, issues: ConfigIssue[], source: string): unknown {
  if (typeof value !== 'object' || value === null) return value
  if (depth > MAX_DEPTH) throw new ConfigError([{ path, message: `nested more than ${MAX_DEPTH} levels deep` }], source)
  if (Array.isArray(value)) return value.map((v, i) => screen(v, `${path}[${i}]`, depth + 1, issues, source))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) {
    const p = path === '' ? k : `${path}.${k}`
    if (k === '__proto__') issues.push({ path: p, message: 'reserved name; use another key' })
    else out[k] = screen(v, p, depth + 1, issues, source)
  }
  return out
}

function compileService (name: string, raw: unknown, issues: ConfigIssue[]): ServiceConfig | undefined {
  const base = `services.${name}`
  if (!isMapping(raw)) {
    issues.push({ path: base, message: 'must be a mapping with origins or deployments' })
    return undefined
  }
  const before = issues.length
  check(ServiceSchema, raw, base, issues)
  // Go on with the defaulted value so origin errors are reported too.
  const svc = Value.Default(ServiceSchema, structuredClone(raw)) as Record<string, unknown> & ServiceConfig & { origins?: unknown }
  const hasOrigins = svc.origins !== undefined
  const hasDeployments = raw.deployments !== undefined
  if (hasOrigins === hasDeployments) {
    issues.push({ path: base, message: hasOrigins ? 'has both "origins" and "deployments"; use one' : 'needs "origins" (primary/secondary) or "deployments"' })
    return undefined
  }
  // `deployments` that is not a mapping was reported by the check above.
  const deploymentsRaw = hasOrigins ? { default: svc.origins } : isMapping(raw.deployments) ? raw.deployments : null
  if (deploymentsRaw === null) return undefined
  const deployments: Record<string, DeploymentConfig> = {}
  for (const [dep, d] of Object.entries(deploymentsRaw)) {
    const dpath = hasOrigins ? `${base}.origins` : `${base}.deployments.${dep}`
    const checked = check(DeploymentSchema, d, dpath, issues) as { primary: unknown, secondary?: unknown } | undefined
    if (checked === undefined) continue
    const primary = checkOrigin(checked.primary, `${dpath}.primary`, issues)
    const secondary = checked.secondary === undefined ? undefined : checkOrigin(checked.secondary, `${dpath}.secondary`, issues)
    if (primary !== undefined) deployments[dep] = secondary === undefined ? { primary } : { primary, secondary }
  }
  const names = Object.keys(deploymentsRaw)
  if (names.length === 0) issues.push({ path: `${base}.deployments`, message: 'needs at least one deployment' })
  let traffic: Record<string, number>
  if (svc.traffic === undefined) {
    // Without weights the first deployment takes all traffic: a deployment
    // added later gets none until an operator shifts it.
    traffic = Object.fromEntries(names.map((n, i) => [n, i === 0 ? 100 : 0]))
  } else if (isMapping(svc.traffic)) {
    traffic = { ...svc.traffic }
    for (const k of Object.keys(traffic)) {
      if (!names.includes(k)) issues.push({ path: `${base}.traffic.${k}`, message: `unknown deployment (defined: ${names.join(', ')})` })
    }
    for (const n of names) if (!Object.hasOwn(traffic, n)) traffic[n] = 0
    if (names.length > 0 && Object.values(traffic).every((w) => w === 0)) issues.push({ path: `${base}.traffic`, message: 'all weights are 0; at least one deployment needs traffic' })
  } else {
    return undefined // not a mapping: reported by the check above
  }
  if (isMapping(svc.sticky) && (svc.sticky.header === undefined) === (svc.sticky.cookie === undefined)) {
    issues.push({ path: `${base}.sticky`, message: 'give exactly one of "header" or "cookie"' })
  }
  // Rollouts (SPEC §11): the steps end with the candidate at 100.
  if (isMapping(raw.rollout)) issues.push(...rolloutIssues(svc.rollout, `${base}.rollout`))
  for (const k of ['rollout', 'preview'] as const) {
    if (isMapping(raw[k]) && names.length < 2) issues.push({ path: `${base}.${k}`, message: 'needs at least two deployments (a baseline and a candidate)' })
  }
  if (issues.length > before) return undefined
  const { origins: _o, ...rest } = svc
  return { ...rest, deployments, traffic } as ServiceConfig
}

/** Checks what the schema cannot say about a rollout's steps (also used for a start request's overrides). */
export function rolloutIssues (r: { steps?: unknown } | undefined, path: string): ConfigIssue[] {
  const steps = r?.steps
  if (!Array.isArray(steps) || steps.length === 0 || !steps.every((w) => Number.isInteger(w))) return []
  for (let i = 1; i < steps.length; i++) {
    if ((steps[i] as number) <= (steps[i - 1] as number)) return [{ path: `${path}.steps[${i}]`, message: `steps must increase (got ${JSON.stringify(steps)})` }]
  }
  if (steps[steps.length - 1] !== 100) return [{ path: `${path}.steps`, message: `the last step must be 100, the candidate taking all traffic (got ${JSON.stringify(steps)})` }]
  return []
}

function checkOrigin (raw: unknown, path: string, issues: ConfigIssue[]): OriginSpec | undefined {
  if (typeof raw === 'string') {
    const s = check(OriginUrlSchema, raw, path, issues) as string | undefined
    if (s === undefined) return undefined
    let url: URL
    try {
      url = new URL(s)
    } catch {
      issues.push({ path, message: `not a URL: "${s}" (expected e.g. http://10.0.0.5:8080)` })
      return undefined
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      issues.push({ path, message: `unsupported scheme ${url.protocol} (http or https)` })
      return undefined
    }
    if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
      issues.push({ path, message: 'an origin is scheme://host[:port] only; put paths in routes' })
      return undefined
    }
    return url.origin
  }
  if (typeof raw === 'object' && raw !== null) return check(LatticeOriginSchema, raw, path, issues) as OriginSpec | undefined
  issues.push({ path, message: 'must be a URL string or { lattice: { service, port, protocol, auth } }' })
  return undefined
}

function compileRoute (raw: unknown, path: string, issues: ConfigIssue[]): RouteConfig | undefined {
  if (!isMapping(raw)) {
    issues.push({ path, message: `must be a mapping with type "proxy" or "aggregate" (got ${show(raw)})` })
    return undefined
  }
  const type = raw.type
  if (type === 'proxy') return check(ProxyRouteSchema, raw, path, issues) as RouteConfig | undefined
  if (type === 'aggregate') {
    const route = check(AggregateRouteSchema, raw, path, issues) as RouteConfig | undefined
    if (route === undefined || route.type !== 'aggregate') return undefined
    const params = new Set([...route.path.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]))
    if (Object.keys(route.sections).length === 0) issues.push({ path: `${path}.sections`, message: 'needs at least one section' })
    for (const [key, s] of Object.entries(route.sections)) {
      for (const m of s.path.matchAll(/\{([^}]*)\}/g)) {
        if (!params.has(m[1]!)) issues.push({ path: `${path}.sections.${key}.path`, message: `placeholder {${m[1]}} is not a parameter of ${route.path}` })
      }
      // The gateway refuses to send a "." or ".." segment (aggregate/plan.ts).
      if (s.path.replace(/\{[^}]*\}/g, 'x').split(/[?#]/)[0]!.split('/').some((seg) => seg === '.' || seg === '..')) {
        issues.push({ path: `${path}.sections.${key}.path`, message: 'must not have a "." or ".." segment' })
      }
    }
    return { ...route, forwardHeaders: route.forwardHeaders.map((h) => h.toLowerCase()) }
  }
  issues.push({ path: `${path}.type`, message: 'must be "proxy" or "aggregate"' })
  return undefined
}

function normaliseTemplate (path: string): string {
  return path.replace(/:[A-Za-z0-9_]+/g, ':').replace(/\/+$/, '') || '/'
}

/** Applies defaults and validates one value against a schema; pushes issues; returns the defaulted value or undefined. */
function check (schema: TSchema, raw: unknown, base: string, issues: ConfigIssue[]): unknown {
  const before = issues.length
  const seen = new Set<string>()
  const value = Value.Default(schema, shapeGuard(schema, structuredClone(raw), base, issues, seen))
  for (const e of Value.Errors(schema, value)) {
    const message = describe(e)
    for (const pointer of e.type === ValueErrorType.ObjectAdditionalProperties ? badNames(e, value) : [e.path]) {
      const path = joinPath(base, pointer, value)
      // One message per path: a failed union or a missing key yields several.
      if (seen.has(path)) continue
      seen.add(path)
      issues.push({ path, message })
    }
  }
  return issues.length === before ? value : undefined
}

/** TypeBox stops at the first name outside a map's pattern (services, sections…): every one of them. */
function badNames (e: ValueError, root: unknown): string[] {
  const pattern = (e.schema as { patternProperties?: Record<string, unknown> }).patternProperties
  if (pattern === undefined) return [e.path]
  const parent = e.path.slice(0, e.path.lastIndexOf('/'))
  let node = root
  for (const part of parent.split('/').slice(1)) node = (node as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')]
  const re = new RegExp(Object.keys(pattern)[0]!)
  return Object.keys(node as object).filter((k) => !re.test(k)).map((k) => `${parent}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`)
}

/**
 * Reports a list where a mapping belongs and a mapping where a list
 * belongs, before defaults are applied: TypeBox merges a value into its
 * default with Object.assign, which would turn `healthCheck: []` into `{}`
 * and `methods: {}` into the default list, silently. The offending value
 * becomes null so nothing below it is reported again.
 */
function shapeGuard (schema: TSchema, value: unknown, path: string, issues: ConfigIssue[], seen: Set<string>): unknown {
  if (typeof value !== 'object' || value === null) return value
  const s = schema as { type?: unknown, properties?: Record<string, TSchema>, patternProperties?: Record<string, TSchema>, items?: TSchema }
  const key = (k: string): string => path === '' ? k : `${path}.${k}`
  if (s.type === 'object') {
    if (Array.isArray(value)) return mismatch(`must be a mapping (got ${show(value)})`)
    const o = value as Record<string, unknown>
    for (const [k, ps] of Object.entries(s.properties ?? {})) {
      if (Object.hasOwn(o, k)) o[k] = shapeGuard(ps, o[k], key(k), issues, seen)
    }
    const values = Object.values(s.patternProperties ?? {})[0]
    if (values !== undefined) for (const k of Object.keys(o)) o[k] = shapeGuard(values, o[k], key(k), issues, seen)
  } else if (s.type === 'array') {
    if (!Array.isArray(value)) return mismatch(`must be a list (got ${show(value)})`)
    if (s.items !== undefined) for (let i = 0; i < value.length; i++) value[i] = shapeGuard(s.items, value[i], `${path}[${i}]`, issues, seen)
  }
  return value

  function mismatch (message: string): null {
    issues.push({ path, message })
    seen.add(path)
    return null
  }
}

/** A JSON pointer under `base`, as `a.b[0].c`: `[i]` only where the value is a list. */
function joinPath (base: string, pointer: string, root: unknown): string {
  let out = base
  let node = root
  for (const part of pointer.split('/').slice(1)) {
    const key = part.replace(/~1/g, '/').replace(/~0/g, '~')
    if (Array.isArray(node)) out += `[${key}]`
    else out += out === '' ? key : `.${key}`
    node = isMapping(node) || Array.isArray(node) ? (Object.hasOwn(node, key) ? (node as Record<string, unknown>)[key] : undefined) : undefined
  }
  return out
}

function describe (e: ValueError): string {
  const s = e.schema as Record<string, unknown>
  switch (e.type) {
    case ValueErrorType.ObjectAdditionalProperties: {
      if (s.patternProperties !== undefined) return `not a valid name (must match ${Object.keys(s.patternProperties as object)[0]})`
      const allowed = Object.keys((s.properties ?? {}) as object)
      const key = e.path.split('/').pop() ?? ''
      const near = allowed.find((a) => editDistance(a.toLowerCase(), key.toLowerCase()) <= 2)
      return `unknown key${near !== undefined ? ` (did you mean "${near}"?)` : ''}${allowed.length > 0 ? ` — allowed: ${allowed.join(', ')}` : ''}`
    }
    case ValueErrorType.ObjectRequiredProperty: return 'is required'
    case ValueErrorType.IntegerMinimum:
    case ValueErrorType.NumberMinimum: return `must be >= ${String(s.minimum)}`
    case ValueErrorType.IntegerMaximum:
    case ValueErrorType.NumberMaximum: return `must be <= ${String(s.maximum)}`
    case ValueErrorType.NumberExclusiveMinimum:
    case ValueErrorType.IntegerExclusiveMinimum: return `must be > ${String(s.exclusiveMinimum)}`
    case ValueErrorType.Integer: return `must be an integer (got ${show(e.value)})`
    case ValueErrorType.Number: return `must be a number (got ${show(e.value)})`
    case ValueErrorType.String: return `must be a string (got ${show(e.value)})`
    case ValueErrorType.StringMinLength: return 'must not be empty'
    case ValueErrorType.StringFormat: return s.format === 'uri' ? `must be a URL, e.g. http://127.0.0.1:4566 (got ${show(e.value)})` : `must be a ${String(s.format)} (got ${show(e.value)})`
    case ValueErrorType.StringPattern:
      // fleet.url: the value may carry a password, so it is never echoed.
      if (s.pattern === '^postgres(ql)?://') return 'must be a postgres:// or postgresql:// URL (the value is not shown: it may hold a password)'
      if (s.pattern !== '^/' && s.pattern !== '^(/.*)?$') return `must match ${String(s.pattern)} (got ${show(e.value)})`
      // `.` stops at a line break: "/a\nb" starts with "/" and still fails.
      return typeof e.value === 'string' && e.value.startsWith('/') ? `must not contain a line break (got ${show(e.value)})` : `must start with "/" (got ${show(e.value)})`
    case ValueErrorType.Boolean: return `must be true or false (got ${show(e.value)})`
    case ValueErrorType.Object: return `must be a mapping (got ${show(e.value)})`
    case ValueErrorType.Array: return `must be a list (got ${show(e.value)})`
    case ValueErrorType.ArrayUniqueItems: return 'must not repeat items'
    case ValueErrorType.Literal: return `must be ${show(s.const)} (got ${show(e.value)})`
    case ValueErrorType.Union: {
      // Literals by value; an integer branch (`server.workers`: 4 or "auto") by its bound.
      const options = ((s.anyOf ?? []) as Array<{ const?: unknown, type?: unknown, minimum?: unknown }>)
        .map((o) => o.const !== undefined ? show(o.const) : o.type === 'integer' ? `an integer${o.minimum === undefined ? '' : ` >= ${String(o.minimum)}`}` : undefined)
        .filter((c) => c !== undefined)
      return options.length > 0 ? `must be one of ${options.join(', ')} (got ${show(e.value)})` : e.message
    }
    default: return e.message
  }
}

function show (v: unknown): string {
  return v === undefined ? 'nothing' : JSON.stringify(v)
}

function editDistance (a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) d[0]![j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
  }
  return d[a.length]![b.length]!
}

function deepFreeze<T> (o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o)
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}
