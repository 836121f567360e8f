/**
 * Route policies (SPEC §14): IAM-style statements, compiled once at start
 * into closures; a request only runs them.
 *
 * Evaluation is IAM's: an explicit Deny that matches wins; else an Allow
 * that matches allows; else the request is denied (implicitly). A
 * statement matches when its `methods` (if any), its `paths` globs (if any)
 * and every condition hold — every operator, and every key under it.
 *
 * A condition key yields a list of values: none when the key is missing, one
 * for a plain value, every element of a list claim, and the words of a
 * `scope` string. A positive operator holds when some value matches some
 * configured value; its negation (`StringNot…`) holds exactly when the
 * positive one does not — so a missing key satisfies every negated operator,
 * as in IAM.
 *
 * `*` matches any characters (`/` too) and `?` exactly one, in
 * `StringLike`/`StringNotLike` and in `paths`. The matcher is iterative and
 * at worst proportional to pattern × value length: a client's long header
 * cannot make a many-star pattern backtrack exponentially, as a RegExp could.
 */
import type { PolicyOperator, PolicyStatement } from '../config/schema.js'

/** What a policy sees of a request. */
export interface PolicyInput {
  method: string
  /** The path, without the query. */
  path: string
  headers: Readonly<Record<string, string | string[] | undefined>>
  query: Readonly<Record<string, unknown>>
  ip: string
  /** The verified token's claims. */
  claims: Readonly<Record<string, unknown>>
}

export type Decision = 'allow' | 'explicit-deny' | 'implicit-deny'

/** A compiled policy: a function of the request. */
export type Policy = (input: PolicyInput) => Decision

type Values = (input: PolicyInput) => readonly string[]
type Test = (input: PolicyInput) => boolean

const NONE: readonly string[] = []

/** Compiles a validated policy's statements. */
export function compilePolicy (statements: readonly PolicyStatement[]): Policy {
  const deny: Test[] = []
  const allow: Test[] = []
  for (const s of statements) (s.effect === 'Deny' ? deny : allow).push(compileStatement(s))
  return (input) => {
    for (let i = 0; i < deny.length; i++) if (deny[i]!(input)) return 'explicit-deny'
    for (let i = 0; i < allow.length; i++) if (allow[i]!(input)) return 'allow'
    return 'implicit-deny'
  }
}

function compileStatement (s: PolicyStatement): Test {
  const tests: Test[] = []
  if (s.methods !== undefined) {
    const methods = new Set(s.methods)
    tests.push((input) => methods.has(input.method))
  }
  if (s.paths !== undefined) {
    const globs = s.paths.map(compileGlob)
    tests.push((input) => globs.some((g) => g(input.path)))
  }
  for (const [op, keys] of Object.entries(s.condition) as Array<[PolicyOperator, Record<string, string[]>]>) {
    for (const [key, values] of Object.entries(keys)) tests.push(compileCondition(op, keyValues(key), values))
  }
  if (tests.length === 0) return () => true
  return (input) => {
    for (let i = 0; i < tests.length; i++) if (!tests[i]!(input)) return false
    return true
  }
}

/** One `Operator: { key: values }` entry. */
export function compileCondition (op: PolicyOperator, get: Values, configured: readonly string[]): Test {
  const negated = op.startsWith('StringNot')
  let matches: (v: string) => boolean
  if (op === 'StringLike' || op === 'StringNotLike') {
    const globs = configured.map(compileGlob)
    matches = (v) => globs.some((g) => g(v))
  } else if (op.endsWith('IgnoreCase')) {
    const set = new Set(configured.map((c) => c.toLowerCase()))
    matches = (v) => set.has(v.toLowerCase())
  } else {
    const set = new Set(configured)
    matches = (v) => set.has(v)
  }
  const holds = (input: PolicyInput): boolean => {
    const vs = get(input)
    for (let i = 0; i < vs.length; i++) if (matches(vs[i]!)) return true
    return false
  }
  return negated ? (input) => !holds(input) : holds
}

/** The values a condition key yields for a request (a validated key: see POLICY_KEY). */
export function keyValues (key: string): Values {
  if (key === 'request:method') return (input) => [input.method]
  if (key === 'request:path') return (input) => [input.path]
  if (key === 'source:ip') return (input) => [input.ip]
  if (key.startsWith('request:header/')) {
    const name = key.slice('request:header/'.length).toLowerCase()
    return (input) => {
      const v = input.headers[name]
      return v === undefined ? NONE : typeof v === 'string' ? [v] : v
    }
  }
  if (key.startsWith('request:query/')) {
    const name = key.slice('request:query/'.length)
    return (input) => Object.hasOwn(input.query, name) ? primitives(input.query[name], false) : NONE
  }
  const claim = key.slice('jwt:'.length)
  const scope = claim === 'scope'
  return (input) => Object.hasOwn(input.claims, claim) ? primitives(input.claims[claim], scope) : NONE
}

/** A claim or query value as strings: lists element by element, a scope string word by word; objects yield nothing. */
export function primitives (v: unknown, splitWords: boolean): readonly string[] {
  if (typeof v === 'string') return splitWords ? v.split(' ').filter((w) => w !== '') : [v]
  if (typeof v === 'number' || typeof v === 'boolean') return [String(v)]
  if (Array.isArray(v)) {
    const out: string[] = []
    for (const e of v) {
      if (typeof e === 'string') out.push(e)
      else if (typeof e === 'number' || typeof e === 'boolean') out.push(String(e))
    }
    return out
  }
  return NONE
}

/** `*` any characters, `?` exactly one (a UTF-16 unit); everything else literal. */
export function compileGlob (pattern: string): (value: string) => boolean {
  const star = pattern.indexOf('*')
  if (star === -1 && !pattern.includes('?')) return (v) => v === pattern
  if (star === pattern.length - 1 && !pattern.includes('?')) {
    const prefix = pattern.slice(0, -1)
    return (v) => v.startsWith(prefix)
  }
  return (v) => globMatch(pattern, v)
}

const STAR = 42 // *
const QUESTION = 63 // ?

/** Iterative wildcard match: on a mismatch, retry from the last star one character further. */
function globMatch (p: string, s: string): boolean {
  let pi = 0
  let si = 0
  let starAt = -1
  let mark = 0
  while (si < s.length) {
    const pc = pi < p.length ? p.charCodeAt(pi) : -1
    if (pc === STAR) {
      starAt = pi++
      mark = si
    } else if (pc !== -1 && (pc === QUESTION || pc === s.charCodeAt(si))) {
      pi++
      si++
    } else if (starAt !== -1) {
      pi = starAt + 1
      si = ++mark
    } else {
      return false
    }
  }
  while (pi < p.length && p.charCodeAt(pi) === STAR) pi++
  return pi === p.length
}
