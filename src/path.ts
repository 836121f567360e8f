/**
 * Request-target normalisation, applied to every public request before it
 * is routed (fastify's `rewriteUrl`), so the gateway routes on the same
 * path it forwards and an upstream can never be talked into resolving a
 * path the gateway did not see.
 *
 * What it does to the path (the query string is never touched):
 * - percent-encoded unreserved characters (RFC 3986 §2.3: A–Z a–z 0–9 - . _ ~)
 *   are decoded, so `%2e%2e` is `..`; every other escape keeps its
 *   encoding with upper-case hex (`%2f` -> `%2F`);
 * - runs of slashes collapse into one (`/api//products` -> `/api/products`),
 *   as nginx's `merge_slashes` does: upstreams disagree about empty
 *   segments, and no route of the gateway has one;
 * - `.` segments are removed and `..` segments resolved (RFC 3986 §5.2.4),
 *   but a `..` may never climb out of a proxy route prefix the path starts
 *   with, nor above `/`: `/api/products/a/../b` is `/api/products/b`, while
 *   `/api/products/../admin` is rejected.
 *
 * What it rejects (400 GW_BAD_REQUEST), because no single reading of it is
 * safe: a target that is not origin-form (`*`, `http://host/…`), a fragment
 * (`#`), a malformed escape (`%zz`), `%00`, a backslash (raw or `%5C`), an
 * encoded slash `%2F` unless `server.encodedSlashes` is `keep`, a segment
 * that would still be a dot-segment once an upstream decodes its escaped
 * slashes (`..%2Fadmin`) or drops its `;` parameters (`..;x`), and a
 * double-encoded dot or slash (`%252e`, `%252f`, `%255c`).
 *
 * The common case costs one regular-expression test: a path with no `%`,
 * `\`, `#`, `//` or `/.` is returned unchanged.
 */

/** What the normaliser rejects, keyed for logs and tests. */
export type PathProblem =
  | 'not-origin-form' | 'fragment' | 'bad-escape' | 'nul' | 'backslash'
  | 'encoded-slash' | 'double-encoded' | 'dot-segment-parameter' | 'escapes-prefix'

export type PathResult = { ok: true, path: string } | { ok: false, problem: PathProblem }

export interface PathPolicy {
  /** Proxy route prefixes (no trailing slash) a `..` may not climb out of. */
  prefixes: readonly string[]
  /** `reject` (default): `%2F` is a 400. `keep`: forwarded as `%2F`, never decoded. */
  encodedSlashes: 'reject' | 'keep'
}

/** A policy compiled once: prefixes split into segments, longest first. */
export interface CompiledPathPolicy {
  readonly prefixes: readonly (readonly string[])[]
  readonly keepEncodedSlashes: boolean
}

export function compilePathPolicy (policy: PathPolicy): CompiledPathPolicy {
  const prefixes = policy.prefixes
    .map((p) => p.split('/').filter((s) => s !== ''))
    .filter((segs) => segs.length > 0)
    .sort((a, b) => b.length - a.length)
  return { prefixes, keepEncodedSlashes: policy.encodedSlashes === 'keep' }
}

// Anything that might need work; everything else is already normal.
const NEEDS_WORK = /[%\\#]|\/\/|\/\./

/**
 * Normalises a request target (path and optional query). The query is
 * returned byte for byte; only the path changes.
 */
export function normaliseTarget (target: string, policy: CompiledPathPolicy): PathResult {
  if (target.charCodeAt(0) !== 47 /* / */) return { ok: false, problem: 'not-origin-form' }
  const q = target.indexOf('?')
  const path = q === -1 ? target : target.slice(0, q)
  if (!NEEDS_WORK.test(path)) {
    if (q !== -1 && target.indexOf('#', q) !== -1) return { ok: false, problem: 'fragment' }
    return { ok: true, path: target }
  }
  if (target.indexOf('#') !== -1) return { ok: false, problem: 'fragment' }
  const r = normalisePath(path, policy)
  if (!r.ok || q === -1) return r
  return { ok: true, path: r.path + target.slice(q) }
}

const HEX = '0123456789ABCDEF'

function hexValue (c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 65 && c <= 70) return c - 55
  if (c >= 97 && c <= 102) return c - 87
  return -1
}

function isUnreserved (b: number): boolean {
  return (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || (b >= 48 && b <= 57) || b === 45 || b === 46 || b === 95 || b === 126
}

/** Normalises a path (no query). */
export function normalisePath (path: string, policy: CompiledPathPolicy): PathResult {
  if (path.charCodeAt(0) !== 47) return { ok: false, problem: 'not-origin-form' }
  // 1. Escapes: decode unreserved, upper-case the rest, reject the ambiguous.
  let decoded = ''
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i)
    if (c === 92 /* \ */) return { ok: false, problem: 'backslash' }
    if (c === 35 /* # */) return { ok: false, problem: 'fragment' }
    if (c !== 37 /* % */) {
      decoded += path[i]
      continue
    }
    const h = i + 2 < path.length ? hexValue(path.charCodeAt(i + 1)) : -1
    const l = h === -1 ? -1 : hexValue(path.charCodeAt(i + 2))
    if (l === -1) return { ok: false, problem: 'bad-escape' }
    const b = h * 16 + l
    i += 2
    if (b === 0) return { ok: false, problem: 'nul' }
    if (b === 0x5c) return { ok: false, problem: 'backslash' }
    if (b === 0x2f && !policy.keepEncodedSlashes) return { ok: false, problem: 'encoded-slash' }
    if (b === 0x25 && i + 2 < path.length) {
      // %25 followed by the hex of '.', '/' or '\': a second decoding would make it one.
      const nh = hexValue(path.charCodeAt(i + 1))
      const nl = hexValue(path.charCodeAt(i + 2))
      const next = nh * 16 + nl
      if (nh !== -1 && nl !== -1 && (next === 0x2e || next === 0x2f || next === 0x5c)) return { ok: false, problem: 'double-encoded' }
    }
    decoded += isUnreserved(b) ? String.fromCharCode(b) : `%${HEX[h]}${HEX[l]}`
  }

  // 2. Segments: empty ones (duplicate slashes) go; a trailing slash stays.
  const raw = decoded.split('/')
  const trailing = raw.length > 1 && raw[raw.length - 1] === ''
  const segments: string[] = []
  for (const s of raw) if (s !== '') segments.push(s)

  // 3. The longest proxy prefix the path starts with is a floor for `..`.
  let floor = 0
  for (const p of policy.prefixes) {
    if (p.length <= segments.length && p.every((s, k) => s === segments[k])) {
      floor = p.length
      break
    }
  }

  // 4. Dot-segments.
  const out: string[] = []
  let endsInDir = trailing
  for (let k = 0; k < segments.length; k++) {
    const s = segments[k]!
    const last = k === segments.length - 1
    if (s === '.') {
      if (last) endsInDir = true
      continue
    }
    if (s === '..') {
      if (out.length <= floor) return { ok: false, problem: 'escapes-prefix' }
      out.pop()
      if (last) endsInDir = true
      continue
    }
    if (s.indexOf('.') !== -1 && hidesDotSegment(s)) return { ok: false, problem: 'dot-segment-parameter' }
    out.push(s)
  }
  if (out.length === 0) return { ok: true, path: '/' }
  return { ok: true, path: '/' + out.join('/') + (endsInDir ? '/' : '') }
}

/**
 * True for a segment an upstream could still read as containing `.` or
 * `..`: `..;x` (servlet containers drop `;` parameters) or, when encoded
 * slashes are kept, `..%2Fadmin` or `a%2F..%2F..%2Fadmin` (an upstream that
 * decodes them splits the segment and may resolve the dots).
 */
function hidesDotSegment (s: string): boolean {
  const semi = s.indexOf(';')
  const head = semi === -1 ? s : s.slice(0, semi)
  if (head === '.' || head === '..') return true
  if (s.indexOf('%2F') === -1) return false
  for (const piece of s.split('%2F')) {
    const h = piece.indexOf(';') === -1 ? piece : piece.slice(0, piece.indexOf(';'))
    if (h === '.' || h === '..') return true
  }
  return false
}
