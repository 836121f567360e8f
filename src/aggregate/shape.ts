/**
 * Section shaping (SPEC §12), compiled once per section, applied in this
 * order: `pick` (the value at a dotted path becomes the section, null when
 * absent), `select` (keep only some dotted paths of an object, or of each
 * object of an array, nested as they were), `rename` (top-level keys).
 *
 * Semantics the tests pin against a plain reference implementation:
 * - `select` walks arrays at every level: `select: [items.id]` on
 *   `{"items": [{"id": 1, "x": 2}]}` gives `{"items": [{"id": 1}]}`. A value
 *   that is neither an object nor an array is kept as it is. A path that is
 *   absent is left out (not null). Keys come out in the order of `select`;
 *   a shorter path that covers a longer one keeps the whole value.
 * - `rename` applies to an object's own keys, or to each object of an
 *   array; when two keys land on one name, the later key (in the object's
 *   order) wins.
 * Values are parsed JSON: plain objects, arrays, strings, numbers,
 * booleans, null. A key `__proto__` is an ordinary key here (it is defined,
 * never assigned, so no prototype changes).
 */

/** A `select` compiled into a tree: a key maps to `true` (keep it all) or to the keys to keep under it. */
export type SelectTree = Map<string, SelectTree | true>

export interface Shape {
  readonly pick: readonly string[] | null
  readonly select: SelectTree | null
  readonly rename: ReadonlyMap<string, string> | null
}

/** Compiles a section's shaping keys; null when it has none (its bytes pass through). */
export function compileShape (cfg: { pick?: string, select?: readonly string[], rename?: Readonly<Record<string, string>> }): Shape | null {
  if (cfg.pick === undefined && cfg.select === undefined && cfg.rename === undefined) return null
  return {
    pick: cfg.pick === undefined ? null : cfg.pick.split('.'),
    select: cfg.select === undefined ? null : compileSelect(cfg.select.map((p) => p.split('.'))),
    rename: cfg.rename === undefined ? null : new Map(Object.entries(cfg.rename))
  }
}

/** Builds a select tree from split paths (`[['a','b'], ['c']]`). */
export function compileSelect (paths: ReadonlyArray<readonly string[]>): SelectTree {
  const root: SelectTree = new Map()
  for (const path of paths) {
    let node = root
    for (let i = 0; i < path.length; i++) {
      const key = path[i]!
      const cur = node.get(key)
      if (cur === true) break // a shorter path already keeps all of it
      if (i === path.length - 1) {
        node.set(key, true)
        break
      }
      let next = cur
      if (next === undefined) {
        next = new Map()
        node.set(key, next)
      }
      node = next
    }
  }
  return root
}

/** Applies a compiled shape to a parsed JSON value. */
export function applyShape (shape: Shape, value: unknown): unknown {
  let v = value
  if (shape.pick !== null) v = pickPath(v, shape.pick)
  if (shape.select !== null) v = selectTree(v, shape.select)
  if (shape.rename !== null) v = renameKeys(v, shape.rename)
  return v
}

/** The value at `path`, or null when some step is absent (arrays are not walked: `a.0` is index 0). */
export function pickPath (value: unknown, path: readonly string[]): unknown {
  let v = value
  for (let i = 0; i < path.length; i++) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, path[i]!)) return null
    v = (v as Record<string, unknown>)[path[i]!]
  }
  return v === undefined ? null : v
}

/** Keeps the tree's paths of an object, of each object of an array, recursively. */
export function selectTree (value: unknown, tree: SelectTree): unknown {
  if (Array.isArray(value)) {
    const out = new Array<unknown>(value.length)
    for (let i = 0; i < value.length; i++) out[i] = selectTree(value[i], tree)
    return out
  }
  if (typeof value !== 'object' || value === null) return value
  const src = value as Record<string, unknown>
  const out: Record<string, unknown> = {}
  for (const [key, sub] of tree) {
    if (!Object.hasOwn(src, key)) continue
    define(out, key, sub === true ? src[key] : selectTree(src[key], sub))
  }
  return out
}

/** Renames an object's keys (or each object's of an array); other values are returned as they are. */
export function renameKeys (value: unknown, rename: ReadonlyMap<string, string>): unknown {
  if (Array.isArray(value)) return value.map((v) => renameOne(v, rename))
  return renameOne(value, rename)
}

function renameOne (value: unknown, rename: ReadonlyMap<string, string>): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(value)) {
    const to = rename.get(key) ?? key
    // The later key wins: delete first so the key also moves to its new place.
    if (Object.hasOwn(out, to)) delete out[to]
    define(out, to, (value as Record<string, unknown>)[key])
  }
  return out
}

/** `o[key] = v` that also works for `__proto__` (assigning it would set the prototype). */
function define (o: Record<string, unknown>, key: string, v: unknown): void {
  if (key === '__proto__') Object.defineProperty(o, key, { value: v, enumerable: true, writable: true, configurable: true })
  else o[key] = v
}
