/**
 * The config loader (src/config/load.ts), property-tested with fast-check.
 *
 * Configs are generated from the schema itself (src/config/schema.ts: every
 * bound, pattern and default is read from it), so a field added there is
 * generated, defaulted and fault-injected here without editing this file.
 * - a valid config validates, and the result is exactly the input with
 *   defaults filled (a model written here), frozen, the input untouched;
 *   validating the result again, or loading it from a JSON or YAML file,
 *   gives the same config;
 * - one injected fault (unknown key at any depth, out-of-range number,
 *   wrong type, missing required key, bad value, unknown service, bad
 *   placeholder, duplicate route, traffic and sticky mistakes) is reported
 *   once, at exactly its path; several faults are all reported;
 * - nothing, neither arbitrary values, a valid config with any node
 *   replaced, nor arbitrary file contents, makes the loader throw anything
 *   but ConfigError;
 * - `${VAR}` / `${VAR:-default}` substitution agrees with a model.
 */
import t from 'tap'
import fc from 'fast-check'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify as toYaml } from 'yaml'
import type { TSchema } from '@sinclair/typebox'
import { validateConfig, loadConfigFile, substituteEnv, ConfigError, type ConfigIssue } from '../src/config/load.js'
import {
  TopSchema, ServerSchema, AdminSchema, LatticeSchema, ServiceSchema, DeploymentSchema, LatticeOriginSchema,
  ProxyRouteSchema, AggregateRouteSchema, SectionSchema
} from '../src/config/schema.js'

const dir = mkdtempSync(join(tmpdir(), 'lattice-gateway-config-props-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
let fileNo = 0
function file (ext: string, contents: string | Uint8Array): string {
  const p = join(dir, `c${fileNo++}${ext}`)
  writeFileSync(p, contents)
  return p
}

type Obj = Record<string, unknown>
type Json = null | boolean | number | string | Json[] | { [k: string]: Json }

/** The parts of a TypeBox schema this file reads. */
interface S {
  type?: string
  properties?: Record<string, S>
  required?: string[]
  patternProperties?: Record<string, S>
  additionalProperties?: unknown
  items?: S
  anyOf?: S[]
  const?: unknown
  default?: unknown
  minimum?: number
  maximum?: number
  exclusiveMinimum?: number
  minLength?: number
  pattern?: string
  format?: string
  uniqueItems?: boolean
}
const sch = (s: TSchema): S => s as unknown as S
const propsOf = (s: S): Record<string, S> => s.properties ?? {}
const LATTICE_REF = propsOf(sch(LatticeOriginSchema)).lattice!

/**
 * fc.assert, with the report made printable: counterexamples hold control
 * characters and odd Unicode that would otherwise garble the TAP stream.
 */
function holds<Ts extends unknown[]> (property: fc.IProperty<Ts>, params: fc.Parameters<Ts>): void {
  const out = fc.check(property, params)
  if (out.failed) throw new Error((fc.defaultReportMessage(out) ?? 'property failed').replace(/[^\x20-\x7e\n]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`).slice(0, 6000))
}

/** The issues a config is rejected with; anything but a ConfigError fails the property. */
function issuesOf (fn: () => unknown): ConfigIssue[] | 'accepted' {
  try {
    fn()
  } catch (err) {
    if (err instanceof ConfigError) return err.issues
    throw err
  }
  return 'accepted'
}

const isMapping = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v)

// --- generators, from the schema ---

const text = fc.string({ unit: 'grapheme', maxLength: 10 })
const text1 = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 10 })

function leafArb (s: S): fc.Arbitrary<unknown> {
  if (s.const !== undefined) return fc.constant(s.const)
  if (s.anyOf !== undefined) return s.anyOf.every((o) => o.const !== undefined) ? fc.constantFrom(...s.anyOf.map((o) => o.const)) : fc.oneof(...s.anyOf.map(leafArb))
  switch (s.type) {
    case 'integer': {
      const min = s.minimum ?? 0
      return fc.integer({ min, max: s.maximum ?? min + 1_000_000 })
    }
    case 'number': {
      const min = s.minimum ?? s.exclusiveMinimum ?? 0
      return fc.double({ min, max: s.maximum ?? min + 1e6, noNaN: true, minExcluded: s.exclusiveMinimum !== undefined })
    }
    case 'boolean': return fc.boolean()
    case 'string':
      if (s.format === 'uri') return fc.constantFrom('http://127.0.0.1:4566', 'https://vpc-lattice.us-east-1.amazonaws.com', 'http://[::1]:1/x?y')
      if (s.pattern === '^/') return text.map((x) => '/' + x)
      if (s.pattern === '^(/.*)?$') {
        // `.` stops at line breaks: "/\n" does not match.
        const re = new RegExp(s.pattern)
        return fc.oneof(fc.constant(''), text.map((x) => '/' + x).filter((x) => re.test(x)))
      }
      if (s.pattern !== undefined) throw new Error(`no generator for pattern ${s.pattern}`)
      return (s.minLength ?? 0) > 0 ? text1 : text
    case 'array': {
      const item = leafArb(s.items!)
      return s.uniqueItems === true ? fc.uniqueArray(item, { maxLength: 5 }) : fc.array(item, { maxLength: 4 })
    }
  }
  throw new Error(`no generator for ${JSON.stringify(s)}`)
}

/** A closed object: every optional key may be absent; `special` overrides (null: never generated). */
function closedArb (s: S, special: Record<string, fc.Arbitrary<unknown> | null> = {}): fc.Arbitrary<Obj> {
  const model: Record<string, fc.Arbitrary<unknown>> = {}
  for (const [k, p] of Object.entries(propsOf(s))) {
    if (Object.hasOwn(special, k)) {
      const a = special[k]
      if (a !== null && a !== undefined) model[k] = a
      continue
    }
    model[k] = p.properties !== undefined ? closedArb(p) : leafArb(p)
  }
  const requiredKeys = (s.required ?? []).filter((k) => propsOf(s)[k]!.default === undefined && Object.hasOwn(model, k))
  return fc.record(model, { requiredKeys, noNullPrototype: true }) as fc.Arbitrary<Obj>
}

// Names: the schema's patterns, plus names that are also Object.prototype members.
const awkward = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', '0', '42', 'a.b', 'x-y', '_']
const nameArb = (re: RegExp, len: number): fc.Arbitrary<string> => fc.oneof(
  fc.constantFrom(...awkward.filter((n) => re.test(n))),
  fc.stringMatching(new RegExp(`^${re.source.slice(1, -2)}{1,${len}}$`))
).filter((n) => n !== '__proto__')
const serviceName = nameArb(/^[A-Za-z0-9_.-]+$/, 10)
const deploymentName = nameArb(/^[A-Za-z0-9_.-]+$/, 8)
const sectionKey = nameArb(/^[A-Za-z0-9_-]+$/, 8)
const routeParam = fc.stringMatching(/^[A-Za-z0-9_]{1,6}$/)

const urlOrigin = fc.record({
  scheme: fc.constantFrom('http', 'https', 'HTTP'),
  host: fc.constantFrom('127.0.0.1', 'localhost', 'example.com', 'EXAMPLE.org', '[::1]', 'svc-a.internal', '10.0.0.5'),
  port: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }),
  slash: fc.boolean()
}).map(({ scheme, host, port, slash }) => `${scheme}://${host}${port === undefined ? '' : `:${port}`}${slash ? '/' : ''}`)
const latticeOrigin = closedArb(LATTICE_REF).map((l) => ({ lattice: l }))
const origin = fc.oneof({ arbitrary: urlOrigin, weight: 3 }, { arbitrary: latticeOrigin, weight: 1 })
const deployment = fc.record({ primary: origin, secondary: origin }, { requiredKeys: ['primary'], noNullPrototype: true })

const shortForm = deployment.map((d) => ({ origins: d }) as Obj)
const longForm = fc.tuple(
  fc.uniqueArray(fc.tuple(deploymentName, deployment, fc.option(fc.integer({ min: 0, max: 100 }), { nil: undefined })), { minLength: 1, maxLength: 3, selector: ([n]) => n }),
  fc.boolean()
).map(([deps, withTraffic]) => {
  const out: Obj = { deployments: Object.fromEntries(deps.map(([n, d]) => [n, d])) }
  if (withTraffic) {
    const traffic: Record<string, number> = {}
    for (const [n, , w] of deps) if (w !== undefined) traffic[n] = w
    if (!Object.values(traffic).some((w) => w > 0)) traffic[deps[0]![0]] = 100
    out.traffic = traffic
  }
  return out
})
const sticky = fc.oneof(fc.record({ header: text1 }, { noNullPrototype: true }), fc.record({ cookie: text1 }, { noNullPrototype: true }))
const service = fc.tuple(
  closedArb(sch(ServiceSchema), { origins: null, deployments: null, traffic: null, sticky: null, rollout: null, preview: null }),
  fc.oneof(shortForm, longForm),
  fc.option(sticky, { nil: undefined })
).map(([base, form, st]) => ({ ...base, ...form, ...(st === undefined ? {} : { sticky: st }) }) as Obj)

/** A path with no "." or ".." segment once placeholders are filled (the loader's rule). */
function hasDotSegment (path: string): boolean {
  return path.replace(/\{[^}]*\}/g, 'x').split(/[?#]/)[0]!.split('/').some((s) => s === '.' || s === '..')
}

// Built once, outside any chain: services are picked by number (`svc`) and
// placeholders by parameter number (`param`) when the config is assembled.
// Route prefixes and paths get a per-index head (`/r3-`, `/a3-`) so no two collide.
const proxyRoute = closedArb(sch(ProxyRouteSchema), {
  prefix: fc.tuple(text, fc.constantFrom('', '/', '//')).map(([x, slash]) => x + slash),
  service: fc.nat()
})
const sectionLiteral = fc.string({ unit: fc.constantFrom('a', 'z', '0', '/', '?', '=', '&', '.', '-', '_', '~', '%', 'é', '}'), maxLength: 8 })
const sectionPiece = fc.oneof(sectionLiteral, fc.nat().map((param) => ({ param })))
const aggregateRoute = fc.record({
  route: closedArb(sch(AggregateRouteSchema), { path: null, sections: null }),
  head: fc.array(fc.stringMatching(/^[a-z0-9._~-]{1,5}$/), { maxLength: 2 }),
  params: fc.uniqueArray(routeParam, { maxLength: 3 }),
  sections: fc.uniqueArray(fc.tuple(sectionKey, closedArb(sch(SectionSchema), { service: fc.nat(), path: fc.array(sectionPiece, { maxLength: 4 }) })), { minLength: 1, maxLength: 3, selector: ([k]) => k })
}).map(({ route, head, params, sections }) => ({
  ...route,
  path: [...head, ...params.map((p) => `:${p}`)].map((x) => '/' + x).join(''),
  sections: Object.fromEntries(sections.map(([k, sec]) => {
    const pieces = (sec.path as Array<string | { param: number }>).map((x) => typeof x === 'string' ? x : params.length === 0 ? '' : `{${params[x.param % params.length]}}`)
    const path = '/' + pieces.join('')
    // No "." or ".." segment: the loader refuses those (a fault below).
    return [k, { ...sec, path: hasDotSegment(path) ? path.replaceAll('.', '_') : path }]
  }))
}) as Obj)

const validConfig: fc.Arbitrary<Obj> = fc.record({
  names: fc.uniqueArray(serviceName, { minLength: 1, maxLength: 3 }),
  top: fc.record({ server: closedArb(sch(ServerSchema)), admin: closedArb(sch(AdminSchema)), lattice: closedArb(sch(LatticeSchema)) }, { requiredKeys: [] }),
  services: fc.array(service, { minLength: 3, maxLength: 3 }),
  routes: fc.option(fc.array(fc.oneof(proxyRoute, aggregateRoute), { maxLength: 4 }), { nil: undefined })
}).map(({ names, top, services, routes }) => {
  const raw: Obj = { ...top, services: Object.fromEntries(names.map((n, i) => [n, services[i]])) }
  const pick = (n: unknown): string => names[(n as number) % names.length]!
  if (routes !== undefined) {
    raw.routes = routes.map((r, i) => r.type === 'proxy'
      ? { ...r, prefix: `/r${i}-${r.prefix as string}`, service: pick(r.service) }
      : { ...r, path: `/a${i}-${r.path as string}`, sections: Object.fromEntries(Object.entries(r.sections as Record<string, Obj>).map(([k, sec]) => [k, { ...sec, service: pick(sec.service) }])) })
  }
  return raw
})

// --- the model of a validated config ---

function withDefaults (s: S, v: Obj): Obj {
  const out: Obj = {}
  for (const [k, p] of Object.entries(propsOf(s))) {
    if (Object.hasOwn(v, k)) out[k] = p.properties !== undefined ? withDefaults(p, v[k] as Obj) : structuredClone(v[k])
    else if (p.default !== undefined) out[k] = p.properties !== undefined ? withDefaults(p, {}) : structuredClone(p.default)
  }
  return out
}

const originModel = (o: unknown): unknown =>
  typeof o === 'string' ? new URL(o).origin : { lattice: withDefaults(LATTICE_REF, (o as { lattice: Obj }).lattice) }

function serviceModel (s: Obj): Obj {
  const out = withDefaults(sch(ServiceSchema), s)
  delete out.origins
  const deps = (s.origins !== undefined ? { default: s.origins } : s.deployments) as Record<string, Obj>
  out.deployments = Object.fromEntries(Object.entries(deps).map(([n, d]) => [n, {
    primary: originModel(d.primary),
    ...(d.secondary === undefined ? {} : { secondary: originModel(d.secondary) })
  }]))
  const names = Object.keys(deps)
  const traffic = s.traffic as Record<string, number> | undefined
  out.traffic = Object.fromEntries(names.map((n, i) => [n, traffic === undefined ? (i === 0 ? 100 : 0) : (Object.hasOwn(traffic, n) ? traffic[n] : 0)]))
  return out
}

function routeModel (r: Obj): Obj {
  if (r.type === 'proxy') return withDefaults(sch(ProxyRouteSchema), r)
  const out = withDefaults(sch(AggregateRouteSchema), r)
  out.sections = Object.fromEntries(Object.entries(r.sections as Record<string, Obj>).map(([k, x]) => [k, withDefaults(sch(SectionSchema), x)]))
  out.forwardHeaders = (out.forwardHeaders as string[]).map((h) => h.toLowerCase())
  return out
}

function configModel (raw: Obj): Obj {
  return {
    server: withDefaults(sch(ServerSchema), (raw.server ?? {}) as Obj),
    admin: withDefaults(sch(AdminSchema), (raw.admin ?? {}) as Obj),
    lattice: withDefaults(sch(LatticeSchema), (raw.lattice ?? {}) as Obj),
    services: Object.fromEntries(Object.entries(raw.services as Record<string, Obj>).map(([n, s]) => [n, serviceModel(s)])),
    routes: ((raw.routes ?? []) as Obj[]).map(routeModel)
  }
}

// SPEC §3's documented defaults, checked against the loader directly (the model above reads the schema's).
const SPEC_TOP_DEFAULTS: Array<[string, string, unknown]> = [
  ['server', 'host', '0.0.0.0'], ['server', 'port', 8080], ['server', 'bodyLimitBytes', 1048576], ['server', 'shutdownGraceMs', 10000],
  ['admin', 'host', '127.0.0.1'], ['admin', 'port', 9901], ['admin', 'token', ''], ['lattice', 'refreshIntervalMs', 60000]
]
const SPEC_SERVICE_DEFAULTS: Array<[string[], unknown]> = [
  [['timeoutMs'], 2000], [['retry', 'methods'], ['GET', 'HEAD', 'OPTIONS']], [['retry', 'onStatus'], [500, 502, 503, 504]],
  [['healthCheck', 'path'], '/health'], [['healthCheck', 'intervalMs'], 1000], [['healthCheck', 'timeoutMs'], 500],
  [['healthCheck', 'unhealthyThreshold'], 2], [['healthCheck', 'healthyThreshold'], 2],
  [['circuitBreaker', 'errorThresholdPercentage'], 50], [['circuitBreaker', 'volumeThreshold'], 10], [['circuitBreaker', 'resetTimeoutMs'], 5000],
  [['failback'], 'auto']
]
const dig = (o: unknown, keys: string[]): unknown => keys.reduce<unknown>((v, k) => isMapping(v) && Object.hasOwn(v, k) ? v[k] : undefined, o)

function deeplyFrozen (v: unknown): boolean {
  if (typeof v !== 'object' || v === null) return true
  return Object.isFrozen(v) && Object.values(v).every(deeplyFrozen)
}

// --- valid configs ---

t.test('a valid config validates to exactly its values with the defaults filled in, frozen, the input untouched', async (t) => {
  holds(fc.property(validConfig, (raw) => {
    const before = structuredClone(raw)
    const config = validateConfig(raw)
    assert.deepStrictEqual(config, configModel(raw))
    assert.deepStrictEqual(raw, before, 'the input is not modified')
    assert.ok(deeplyFrozen(config), 'frozen all the way down')
    for (const [section, key, value] of SPEC_TOP_DEFAULTS) {
      if (dig(raw, [section, key]) === undefined) assert.deepStrictEqual(dig(config, [section, key]), value, `${section}.${key}`)
    }
    for (const [name, svc] of Object.entries(raw.services as Record<string, Obj>)) {
      for (const [keys, value] of SPEC_SERVICE_DEFAULTS) {
        if (dig(svc, keys) === undefined) assert.deepStrictEqual(dig(config.services[name], keys), value, `services.${name}.${keys.join('.')}`)
      }
    }
  }), { numRuns: 100 })
  t.pass('100 generated configs')
})

t.test('validating a validated config again changes nothing', async (t) => {
  holds(fc.property(validConfig, (raw) => {
    const config = validateConfig(raw)
    assert.deepStrictEqual(validateConfig(JSON.parse(JSON.stringify(config))), config)
  }), { numRuns: 60 })
  t.pass('idempotent')
})

t.test('a valid config loads the same from a JSON file and from a YAML file', async (t) => {
  holds(fc.property(validConfig, (raw) => {
    const jsonText = JSON.stringify(raw, null, 2)
    const yamlText = toYaml(raw)
    // Substitution runs on the file's text first; a generated string that
    // happens to hold "${" is not this property's subject.
    fc.pre(!jsonText.includes('${') && !yamlText.includes('${'))
    const expected = validateConfig(raw)
    assert.deepStrictEqual(loadConfigFile(file('.json', jsonText), {}), expected)
    assert.deepStrictEqual(loadConfigFile(file('.yaml', yamlText), {}), expected)
  }), { numRuns: 40 })
  t.pass('same config from both formats')
})

// --- faults ---

type Seg = string | number
const fmt = (segs: readonly Seg[]): string => segs.reduce<string>((out, s) => typeof s === 'number' ? `${out}[${s}]` : out === '' ? s : `${out}.${s}`, '')

/** The choices a fault may use, generated alongside the config. */
interface Choice {
  key: string
  junk: Json
  n: number
  name: string
}

interface Site {
  kind: string
  /** Where the issue must be reported; `routes[+]` stands for a route appended later. */
  path: string
  /** What the fault belongs to: two faults sharing a unit interact when one is a cross-check. */
  units: string[]
  /** schema: found by a schema check; origin: by the origin check after it; cross: needs the rest of its unit valid. */
  cls: 'schema' | 'origin' | 'cross'
  /** The deployment object a fault lies in (its origin checks run only when the deployment's schema check passed). */
  scope?: string
  /** Appends a route (applied after every other fault). */
  appends?: boolean
  /** Inserts a route, moving the later ones (single faults only). */
  inserts?: boolean
  /** Mutates the config and returns the path and message the issue must have. */
  apply: (raw: Obj, c: Choice) => { path: string, message: RegExp }
}

function nodeAt (raw: Obj, segs: readonly Seg[], create = false): Obj {
  let node: Obj = raw
  for (const s of segs) {
    let next = node[s as string]
    if (next === undefined && create) next = node[s as string] = {}
    node = next as Obj
  }
  return node
}

const ALL_KEYS = new Set<string>()
;(function collect (s: S): void {
  for (const [k, p] of Object.entries(propsOf(s))) { ALL_KEYS.add(k); collect(p) }
  for (const p of Object.values(s.patternProperties ?? {})) collect(p)
  if (s.items !== undefined) collect(s.items)
})({ properties: { t: sch(TopSchema), s: sch(ServiceSchema), l: sch(LatticeOriginSchema), p: sch(ProxyRouteSchema), a: sch(AggregateRouteSchema), x: sch(SectionSchema) } })

const WRONG: Json[] = [null, true, false, 0, 7, -1, 1.5, '', 'text', '7', [], [1], ['x'], {}, { a: 1 }]

/** Values of another type than the schema wants (a value of the right type but a bad value is another fault). */
function wrongValuesFor (p: S): Json[] {
  // A union of literals and (server.workers) an integer with a minimum: anything no branch takes.
  const fits = (o: S, v: Json): boolean => o.const !== undefined ? o.const === v : o.type === 'integer' && Number.isInteger(v) && (v as number) >= (o.minimum ?? -Infinity)
  if (p.anyOf !== undefined) return WRONG.filter((v) => !p.anyOf!.some((o) => fits(o, v)))
  const enumValues = p.const !== undefined ? [p.const] : undefined
  if (enumValues !== undefined) return WRONG.filter((v) => !enumValues.includes(v))
  switch (p.type) {
    case 'integer': return WRONG.filter((v) => !Number.isInteger(v))
    case 'number': return WRONG.filter((v) => typeof v !== 'number')
    case 'string': return WRONG.filter((v) => typeof v !== 'string')
    case 'boolean': return WRONG.filter((v) => typeof v !== 'boolean')
    case 'array': return WRONG.filter((v) => !Array.isArray(v))
    case 'object': return WRONG.filter((v) => !isMapping(v))
  }
  // Unknown in the schema (an origin): a URL string or a { lattice } mapping.
  return WRONG.filter((v) => typeof v !== 'string' && !isMapping(v))
}

/** A value of the right type that breaks one bound or rule of `p`, with the message it must get. */
function badValueFor (p: S, n: number): { value: Json, message: RegExp } | undefined {
  const k = n % 100
  if (p.type === 'integer' || p.type === 'number') {
    const options: Array<{ value: Json, message: RegExp }> = []
    if (p.minimum !== undefined) options.push({ value: p.minimum - 1 - k, message: new RegExp(`^must be >= ${p.minimum}$`) })
    if (p.exclusiveMinimum !== undefined) options.push({ value: p.exclusiveMinimum - k, message: new RegExp(`^must be > ${p.exclusiveMinimum}$`) })
    if (p.maximum !== undefined) options.push({ value: p.maximum + (p.type === 'number' ? 0.5 : 1) + k, message: new RegExp(`^must be <= ${p.maximum}$`) })
    return options.length === 0 ? undefined : options[n % options.length]
  }
  if (p.type === 'string') {
    if (p.format === 'uri') return { value: 'not a url', message: /^must be a URL/ }
    if (p.pattern === '^/' || p.pattern === '^(/.*)?$') return { value: 'no-slash' + '/x'.repeat(k % 3), message: /^must start with "\/"/ }
    if ((p.minLength ?? 0) > 0) return { value: '', message: /^must not be empty$/ }
    return undefined
  }
  if (p.anyOf !== undefined) return { value: 'bogus', message: /^must be one of/ }
  return undefined
}

/** Every fault that can be injected into `raw`, each reported at one known path. */
function sitesOf (raw: Obj): Site[] {
  const sites: Site[] = []
  const services = raw.services as Record<string, Obj>
  const routes = (raw.routes ?? []) as Obj[]

  // presentOnly: faults only in keys already there (sticky: adding its other key is a second fault).
  interface Node { segs: Seg[], schema: S, units: string[], cls: 'schema' | 'origin', scope?: string, skip?: string[], presentOnly?: boolean }
  const nodes: Node[] = [
    { segs: [], schema: sch(TopSchema), units: ['top'], cls: 'schema' },
    { segs: ['server'], schema: sch(ServerSchema), units: ['server'], cls: 'schema' },
    { segs: ['admin'], schema: sch(AdminSchema), units: ['admin'], cls: 'schema' },
    { segs: ['lattice'], schema: sch(LatticeSchema), units: ['lattice'], cls: 'schema' }
  ]
  for (const [name, svc] of Object.entries(services)) {
    const base: Seg[] = ['services', name]
    const unit = [fmt(base)]
    const short = svc.origins !== undefined
    nodes.push({ segs: base, schema: sch(ServiceSchema), units: unit, cls: 'schema', skip: short ? ['deployments'] : ['origins'] })
    for (const k of ['retry', 'healthCheck', 'circuitBreaker']) nodes.push({ segs: [...base, k], schema: propsOf(sch(ServiceSchema))[k]!, units: unit, cls: 'schema' })
    if (svc.sticky !== undefined) nodes.push({ segs: [...base, 'sticky'], schema: propsOf(sch(ServiceSchema)).sticky!, units: unit, cls: 'schema', presentOnly: true })
    const deps = (short ? { '': svc.origins } : svc.deployments) as Record<string, Obj>
    for (const [dep, d] of Object.entries(deps)) {
      const dsegs: Seg[] = short ? [...base, 'origins'] : [...base, 'deployments', dep]
      const scope = fmt(dsegs)
      nodes.push({ segs: dsegs, schema: sch(DeploymentSchema), units: unit, cls: 'schema', scope })
      for (const role of ['primary', 'secondary']) {
        const o = d[role]
        if (o === undefined) continue
        if (typeof o === 'string') {
          const path = fmt([...dsegs, role])
          const bad: Array<[string, RegExp]> = [['not a url', /^not a URL/], ['ftp://127.0.0.1:21', /^unsupported scheme ftp:/], ['http://127.0.0.1:1/path', /scheme:\/\/host/], ['http://h?x=1', /scheme:\/\/host/], ['', /^must not be empty$/]]
          sites.push({ kind: 'bad origin URL', path, units: unit, cls: 'origin', scope, apply: (r, c) => { const [v, m] = bad[c.n % bad.length]!; nodeAt(r, dsegs)[role] = v; return { path, message: m } } })
        } else {
          nodes.push({ segs: [...dsegs, role], schema: sch(LatticeOriginSchema), units: unit, cls: 'origin', scope })
          nodes.push({ segs: [...dsegs, role, 'lattice'], schema: LATTICE_REF, units: unit, cls: 'origin', scope })
        }
      }
    }
    // Traffic weights are a record of integers >= 0.
    const traffic = svc.traffic as Record<string, number> | undefined
    for (const dep of Object.keys(traffic ?? {})) {
      const segs: Seg[] = [...base, 'traffic', dep]
      const path = fmt(segs)
      sites.push({ kind: 'negative weight', path, units: unit, cls: 'schema', apply: (r, c) => { nodeAt(r, [...base, 'traffic'])[dep] = -1 - (c.n % 100); return { path, message: /^must be >= 0$/ } } })
      sites.push({ kind: 'weight of the wrong type', path, units: unit, cls: 'schema', apply: (r, c) => { const w = WRONG.filter((v) => !Number.isInteger(v) && v !== 0); nodeAt(r, [...base, 'traffic'])[dep] = w[c.n % w.length]!; return { path, message: /^must be/ } } })
    }
    const names = Object.keys(deps).map((d) => short ? 'default' : d)
    const fullTraffic = (): Record<string, number> => traffic === undefined ? Object.fromEntries(names.map((n, i) => [n, i === 0 ? 100 : 0])) : { ...traffic }
    sites.push({ kind: 'traffic for an unknown deployment', path: fmt([...base, 'traffic', '?']), units: unit, cls: 'cross', apply: (r, c) => {
      let dep = c.name === '__proto__' ? 'proto' : c.name
      while (names.includes(dep)) dep += '_'
      nodeAt(r, base).traffic = { ...fullTraffic(), [dep]: c.n % 100 }
      return { path: fmt([...base, 'traffic', dep]), message: /^unknown deployment/ }
    } })
    sites.push({ kind: 'every weight 0', path: fmt([...base, 'traffic']), units: unit, cls: 'cross', apply: (r) => {
      nodeAt(r, base).traffic = Object.fromEntries(names.map((n) => [n, 0]))
      return { path: fmt([...base, 'traffic']), message: /^all weights are 0/ }
    } })
    sites.push({ kind: 'sticky with both or neither key', path: fmt([...base, 'sticky']), units: unit, cls: 'cross', apply: (r, c) => {
      nodeAt(r, base).sticky = c.n % 2 === 0 ? { header: 'x-user', cookie: 'uid' } : {}
      return { path: fmt([...base, 'sticky']), message: /^give exactly one of/ }
    } })
    sites.push({ kind: 'both origins and deployments, or neither', path: fmt(base), units: unit, cls: 'cross', apply: (r) => {
      const s = nodeAt(r, base)
      if (short) s.deployments = { blue: s.origins }
      else delete s.deployments
      return { path: fmt(base), message: short ? /^has both "origins" and "deployments"/ : /^needs "origins"/ }
    } })
  }

  routes.forEach((route, i) => {
    const base: Seg[] = ['routes', i]
    const unit = fmt(base)
    const proxy = route.type === 'proxy'
    nodes.push({ segs: base, schema: sch(proxy ? ProxyRouteSchema : AggregateRouteSchema), units: [unit], cls: 'schema' })
    const unknownService = (segs: Seg[]): Site => ({ kind: 'unknown service', path: fmt(segs), units: [unit, 'services'], cls: 'cross', apply: (r, c) => {
      let name = c.name
      while (Object.hasOwn(services, name)) name += '_'
      nodeAt(r, segs.slice(0, -1))[segs.at(-1) as string] = name
      return { path: fmt(segs), message: /^unknown service/ }
    } })
    if (proxy) {
      sites.push(unknownService([...base, 'service']))
    } else {
      const params = [...(route.path as string).matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]!)
      for (const key of Object.keys(route.sections as Obj)) {
        const ssegs: Seg[] = [...base, 'sections', key]
        nodes.push({ segs: ssegs, schema: sch(SectionSchema), units: [unit], cls: 'schema' })
        sites.push(unknownService([...ssegs, 'service']))
        const path = fmt([...ssegs, 'path'])
        sites.push({ kind: 'placeholder that is no route parameter', path, units: [unit], cls: 'cross', apply: (r, c) => {
          let name = c.name.replace(/[{}]/g, '')
          while (params.includes(name)) name += '_'
          nodeAt(r, ssegs).path += `/{${name}}`
          return { path, message: /^placeholder \{.*\} is not a parameter/ }
        } })
        sites.push({ kind: 'dot-segment in a section path', path, units: [unit], cls: 'cross', apply: (r, c) => {
          nodeAt(r, ssegs).path = ['/..', '/a/./b', '/x/..?q=1', '/.'][c.n % 4]!
          return { path, message: /^must not have a "\." or "\.\." segment/ }
        } })
      }
    }
    // The same route again: reported on whichever of the two comes later.
    const field = proxy ? 'prefix' : 'path'
    const copy = (): Obj => {
      const r = structuredClone(route)
      if (proxy) r.prefix = (r.prefix as string) + '/'
      else {
        // Renamed parameters are still the same route.
        r.path = (r.path as string).replace(/:([A-Za-z0-9_]+)/g, ':$1x')
        for (const s of Object.values(r.sections as Record<string, Obj>)) s.path = (s.path as string).replace(/\{([^}]*)\}/g, '{$1x}')
      }
      return r
    }
    sites.push({ kind: 'duplicate route appended', path: 'routes[+]', units: [unit], cls: 'cross', appends: true, apply: (r) => {
      const list = r.routes as Obj[]
      list.push(copy())
      return { path: `routes[${list.length - 1}].${field}`, message: /^duplicate route/ }
    } })
    sites.push({ kind: 'duplicate route inserted before', path: 'routes', units: ['routes'], cls: 'cross', inserts: true, apply: (r) => {
      ;(r.routes as Obj[]).splice(i, 0, copy())
      return { path: `routes[${i + 1}].${field}`, message: /^duplicate route/ }
    } })
  })

  for (const node of nodes) {
    const { segs, schema, units, cls, scope } = node
    const at = (k: string): string => fmt([...segs, k])
    if (schema.additionalProperties === false) {
      sites.push({ kind: 'unknown key', path: at('?'), units, cls, scope, apply: (r, c) => {
        nodeAt(r, segs, true)[c.key] = c.junk
        return { path: at(c.key), message: /^unknown key/ }
      } })
    }
    for (const [k, p] of Object.entries(propsOf(schema))) {
      if (node.skip?.includes(k)) continue
      if (node.presentOnly === true && !Object.hasOwn(nodeAt(raw, segs), k)) continue
      const path = at(k)
      if (!(segs.length === 2 && segs[0] === 'routes' && k === 'type')) {
        // An origin is Unknown to the schema: the origin check finds its type.
        const typed = p.type !== undefined || p.anyOf !== undefined || p.const !== undefined
        // Without a usable `services`, routes are not checked against it.
        const whole = segs.length === 0 && k === 'services'
        sites.push({ kind: 'wrong type', path, units: whole ? [...units, 'services'] : units, cls: whole ? 'cross' : typed ? cls : 'origin', scope, apply: (r, c) => {
          const w = wrongValuesFor(p)
          nodeAt(r, segs, true)[k] = w[c.n % w.length]!
          return { path, message: /^must be/ }
        } })
      } else {
        // The type picks the schema: a route without one is checked no further.
        sites.push({ kind: 'unknown route type', path, units, cls: 'cross', apply: (r, c) => {
          const w: Json[] = ['bogus', 'PROXY', 7, null, ['proxy']]
          nodeAt(r, segs)[k] = w[c.n % w.length]!
          return { path, message: /^must be "proxy" or "aggregate"/ }
        } })
      }
      if (badValueFor(p, 0) !== undefined && !(segs.length === 2 && segs[0] === 'routes' && k === 'type')) {
        sites.push({ kind: 'bad value', path, units, cls, scope, apply: (r, c) => {
          const bad = badValueFor(p, c.n)!
          nodeAt(r, segs, true)[k] = bad.value
          return { path, message: bad.message }
        } })
      }
      const required = (schema.required ?? []).includes(k) && p.default === undefined && k !== 'type'
      const present = Object.hasOwn(nodeAt(raw, segs) ?? {}, k)
      if (required && present) {
        sites.push({ kind: 'missing required key', path, units, cls, scope, apply: (r) => {
          delete nodeAt(r, segs)[k]
          return { path, message: /^is required$/ }
        } })
      }
      const items = nodeAt(raw, segs)?.[k]
      if (p.type === 'array' && Array.isArray(items) && items.length > 0) {
        const item = p.items!
        sites.push({ kind: 'bad list item', path: at(k), units, cls, scope, apply: (r, c) => {
          const j = c.n % items.length
          const bad = badValueFor(item, c.n) ?? { value: wrongValuesFor(item)[0]!, message: /^must be/ }
          ;(nodeAt(r, segs)[k] as Json[])[j] = bad.value
          return { path: `${path}[${j}]`, message: bad.message }
        } })
        if (p.uniqueItems === true) {
          sites.push({ kind: 'repeated list item', path, units, cls, scope, apply: (r, c) => {
            const list = nodeAt(r, segs)[k] as Json[]
            list.push(list[c.n % list.length]!)
            return { path, message: /^must not repeat items$/ }
          } })
        }
      }
    }
  }
  return sites
}

const choice: fc.Arbitrary<Choice> = fc.record({
  key: fc.oneof(
    fc.stringMatching(/^[a-z][A-Za-z0-9]{0,9}$/),
    fc.stringMatching(/^[0-9]{1,3}$/),
    fc.constantFrom('healthChek', 'prefx', 'Port', 'constructor', 'toString', 'a.b', 'a/b', 'x~y', 'a b', 'ü', '')
  ).filter((k) => !ALL_KEYS.has(k)),
  // Anything under an unknown key (but no "__proto__" key: that is a fault of its own).
  junk: fc.jsonValue({ maxDepth: 2 }).filter((j) => !JSON.stringify(j).includes('"__proto__"')) as fc.Arbitrary<Json>,
  n: fc.nat(),
  name: fc.oneof(serviceName, fc.constantFrom('constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf'))
})

const nested = (a: string, b: string): boolean => a === b || b.startsWith(a + '.') || b.startsWith(a + '[') || a.startsWith(b + '.') || a.startsWith(b + '[')
const routeAppend = (p: string): string => p === 'routes[+]' ? 'routes[999999]' : p

function compatible (a: Site, b: Site): boolean {
  if (nested(routeAppend(a.path), routeAppend(b.path))) return false
  if (a.units.some((u) => b.units.includes(u)) && (a.cls === 'cross' || b.cls === 'cross')) return false
  if (a.scope !== undefined && a.scope === b.scope && a.cls !== b.cls) return false
  return true
}

const faultCase = fc.tuple(validConfig, fc.nat(), choice)

t.test('one injected fault is reported once, at exactly its path, with its message', async (t) => {
  const kinds = new Map<string, number>()
  holds(fc.property(faultCase, ([raw, pick, c]) => {
    const sites = sitesOf(raw)
    const site = sites[pick % sites.length]!
    const broken = structuredClone(raw)
    const { path, message } = site.apply(broken, c)
    kinds.set(site.kind, (kinds.get(site.kind) ?? 0) + 1)
    const issues = issuesOf(() => validateConfig(broken))
    assert.notEqual(issues, 'accepted', `${site.kind} at ${path} was accepted`)
    assert.deepStrictEqual((issues as ConfigIssue[]).map((i) => i.path), [path], `${site.kind}: ${JSON.stringify(issues)}`)
    assert.match((issues as ConfigIssue[])[0]!.message, message)
  }), { numRuns: 300 })
  t.ok(kinds.size >= 15, `fault kinds exercised: ${[...kinds.keys()].sort().join(', ')}`)
})

t.test('several faults in one config are all reported, each once at its own path', async (t) => {
  holds(fc.property(validConfig, fc.array(fc.tuple(fc.nat(), choice), { minLength: 2, maxLength: 5 }), (raw, picks) => {
    const sites = sitesOf(raw).filter((s) => s.inserts !== true)
    const chosen: Array<[Site, Choice]> = []
    for (const [pick, c] of picks) {
      const site = sites[pick % sites.length]!
      if (chosen.every(([other]) => compatible(site, other))) chosen.push([site, c])
    }
    const broken = structuredClone(raw)
    // Appended routes last, so every other fault's path is still right.
    chosen.sort(([a], [b]) => Number(a.appends === true) - Number(b.appends === true))
    const expected = chosen.map(([site, c]) => ({ kind: site.kind, ...site.apply(broken, c) }))
    const issues = issuesOf(() => validateConfig(broken))
    assert.notEqual(issues, 'accepted')
    const got = issues as ConfigIssue[]
    assert.deepStrictEqual(got.map((i) => i.path).sort(), expected.map((e) => e.path).sort(), JSON.stringify({ expected: expected.map((e) => `${e.kind} @ ${e.path}`), got }))
    for (const e of expected) assert.match(got.find((i) => i.path === e.path)!.message, e.message, e.kind)
  }), { numRuns: 150 })
  t.pass('all reported')
})

// --- nothing but ConfigError ---

/** Every path to a value in a JSON document. */
function pathsOf (v: unknown, segs: Seg[] = []): Seg[][] {
  const out: Seg[][] = [segs]
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...pathsOf(x, [...segs, i])))
  else if (isMapping(v)) for (const [k, x] of Object.entries(v)) out.push(...pathsOf(x, [...segs, k]))
  return out
}

function checkOutcome (fn: () => unknown): void {
  const issues = issuesOf(fn)
  if (issues === 'accepted') return
  assert.ok(issues.length > 0, 'a ConfigError carries at least one issue')
  for (const i of issues) assert.ok(typeof i.path === 'string' && typeof i.message === 'string' && i.message !== '', JSON.stringify(i))
}

t.test('any node of a valid config replaced by any JSON value (or removed): a config or a ConfigError, nothing else', async (t) => {
  const replacement = fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constant(undefined), fc.constantFrom(null, [], {}, '', 0, -0, 1e300, '${X}', '__proto__'))
  holds(fc.property(validConfig, fc.nat(), replacement, (raw, pick, value) => {
    const paths = pathsOf(raw).filter((p) => p.length > 0)
    const segs = paths[pick % paths.length]!
    const broken = structuredClone(raw)
    const parent = nodeAt(broken, segs.slice(0, -1)) as Record<string | number, unknown>
    const last = segs.at(-1)!
    if (value === undefined) {
      if (Array.isArray(parent)) parent.splice(last as number, 1)
      else delete parent[last]
    } else parent[last] = value
    checkOutcome(() => validateConfig(broken))
  }), { numRuns: 250 })
  t.pass('never anything but ConfigError')
})

t.test('arbitrary values: a config or a ConfigError, nothing else', async (t) => {
  holds(fc.property(fc.oneof(fc.anything({ maxDepth: 4 }), fc.jsonValue({ maxDepth: 4 }), fc.record({ services: fc.anything({ maxDepth: 3 }), routes: fc.anything({ maxDepth: 3 }) })), (value) => {
    checkOutcome(() => validateConfig(value))
  }), { numRuns: 300 })
  t.pass('never anything but ConfigError')
})

t.test('"__proto__" as a key anywhere is reported at its path, never silently dropped', async (t) => {
  holds(fc.property(validConfig, fc.nat(), (raw, pick) => {
    const objects = pathsOf(raw).filter((p) => isMapping(nodeAt(raw, p)))
    const segs = objects[pick % objects.length]!
    const broken = structuredClone(raw)
    // As JSON.parse and YAML make it: an own property.
    Object.defineProperty(nodeAt(broken, segs), '__proto__', { value: { origins: { primary: 'http://127.0.0.1:1' } }, enumerable: true, configurable: true, writable: true })
    const issues = issuesOf(() => validateConfig(broken))
    assert.notEqual(issues, 'accepted')
    assert.ok((issues as ConfigIssue[]).some((i) => i.path === fmt([...segs, '__proto__']) && /^reserved name/.test(i.message)), JSON.stringify(issues))
  }), { numRuns: 60 })
  t.pass('reported')
})

t.test('a document nested deeper than any config is a ConfigError, not a stack overflow', async (t) => {
  const deep = '{"services":{"a":{"origins":{"primary":' + '['.repeat(20000) + ']'.repeat(20000) + '}}}}'
  const issues = issuesOf(() => loadConfigFile(file('.json', deep), {}))
  t.not(issues, 'accepted')
  t.match((issues as ConfigIssue[])[0]!.message, /nested more than \d+ levels/)
  const cyclic = issuesOf(() => loadConfigFile(file('.yaml', 'services:\n  a: &x\n    origins: *x\n'), {}))
  t.not(cyclic, 'accepted', 'a YAML alias cycle is refused')
})

t.test('arbitrary file contents (text, YAML-ish fragments, bytes, JSON) under any extension: a config or a ConfigError that names the file', async (t) => {
  const yamlToken = fc.constantFrom(
    'services:', 'routes:', 'server:', 'origins:', 'deployments:', 'primary: http://127.0.0.1:1', 'product:', '- ', '  ', '\n', ':', ' ',
    '{', '}', '[', ']', ',', '"', "'", '&a ', '*a', '!!str ', '!!int ', '!!binary ', '!!set ', '~', 'null', '#', '---', '...', '? ', '|', '>',
    '%YAML 1.2\n', '<<: *a', '0x1F', '.inf', '.nan', '-1', '1e309', '${X}', '${Y:-[1]}', '$', 'type: proxy', 'prefix: /', '__proto__:', '\t', '\r\n'
  )
  const contents = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 60 }),
    fc.array(yamlToken, { maxLength: 30 }).map((ts) => ts.join('')),
    fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
    validConfig.map((c) => toYaml(c)).chain((y) => fc.nat(y.length).map((cut) => y.slice(0, cut))),
    fc.uint8Array({ maxLength: 60 })
  )
  const env = fc.dictionary(fc.constantFrom('X', 'Y', 'PORT'), fc.string({ maxLength: 6 }))
  // The YAML parser reports odd tags and aliases as process warnings; here they are expected.
  const emitWarning = process.emitWarning
  let warnings = 0
  process.emitWarning = (() => { warnings++ }) as typeof process.emitWarning
  t.teardown(() => { process.emitWarning = emitWarning })
  holds(fc.property(contents, fc.constantFrom('.json', '.yaml', '.yml', '', '.JSON'), env, (text, ext, vars) => {
    const f = file(ext, text)
    try {
      loadConfigFile(f, vars)
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      assert.ok(err.message.startsWith(f), 'the message names the file')
    }
  }), { numRuns: 200 })
  t.pass(`never anything but ConfigError (${warnings} YAML warnings on the way)`)
})

// --- ${VAR} substitution ---

/** Reference: scan left to right; `${NAME}` or `${NAME:-default}` (default up to the first `}`) is replaced, anything else is kept. */
function substituteModel (text: string, env: Record<string, string | undefined>): string {
  let out = ''
  let i = 0
  while (i < text.length) {
    if (text.startsWith('${', i)) {
      let j = i + 2
      while (j < text.length && /[A-Za-z0-9_]/.test(text[j]!)) j++
      const name = text.slice(i + 2, j)
      if (name !== '' && !/^[0-9]/.test(name)) {
        let def: string | undefined
        let end = -1
        if (text[j] === '}') end = j
        else if (text.startsWith(':-', j)) {
          const close = text.indexOf('}', j + 2)
          if (close !== -1) { def = text.slice(j + 2, close); end = close }
        }
        if (end !== -1) {
          const value = env[name]
          out += value !== undefined && value !== '' ? value : (def ?? '')
          i = end + 1
          continue
        }
      }
    }
    out += text[i]
    i++
  }
  return out
}

const varName = fc.constantFrom('A', 'B', 'PORT', '_X', 'a1', 'LONG_NAME_2')
const envArb = fc.dictionary(varName, fc.oneof(fc.string({ maxLength: 6 }), fc.constant(''), fc.constant('${A}'), fc.constant('}')))
const substitutionText = fc.array(fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 6 }),
  varName.map((n) => `\${${n}}`),
  fc.tuple(varName, fc.string({ maxLength: 5 })).map(([n, d]) => `\${${n}:-${d}}`),
  fc.constantFrom('$', '{', '}', '${', '${}', '${1A}', '${A', '${A:-', '${A-x}', '${A:x}', '$${A}', '${A:-${B}}', '${ A }', ':-', '\\${A}')
), { maxLength: 10 }).map((ps) => ps.join(''))

t.test('substituteEnv agrees with a scanning model of ${VAR} and ${VAR:-default}', async (t) => {
  holds(fc.property(substitutionText, envArb, (text, env) => {
    assert.equal(substituteEnv(text, env), substituteModel(text, env))
  }), { numRuns: 500 })
  t.pass('model agrees')
})

t.test('text without "${" comes back unchanged, whatever the environment', async (t) => {
  holds(fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }).filter((s) => !s.includes('${')), envArb, (text, env) => substituteEnv(text, env) === text), { numRuns: 300 })
  t.pass('unchanged')
})

t.test('a substituted value is never expanded again, and an unset or empty variable without a default is empty', async (t) => {
  holds(fc.property(varName, fc.string({ maxLength: 8 }), fc.boolean(), (name, value, set) => {
    const env: Record<string, string> = set ? { [name]: `\${${name}}${value}` } : {}
    const out = substituteEnv(`<\${${name}}>`, env)
    return set ? out === `<\${${name}}${value}>` : out === '<>'
  }), { numRuns: 200 })
  t.equal(substituteEnv('${A}', { A: '' }), '', 'empty counts as unset')
  t.equal(substituteEnv('${A:-d}', { A: '' }), 'd', 'and takes the default')
})
