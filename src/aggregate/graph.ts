/**
 * The dependency graph of an aggregate route's sections (SPEC §12). A
 * placeholder in a section's path is either a route parameter (`{id}`) or a
 * field of another section's answer (`{product.sku}`: section `product`,
 * field path `sku`). Sections that name other sections wait for them; all
 * others start at once.
 *
 * This module imports nothing: the config loader calls it to report
 * unknown sections and cycles with their paths, and the plan compiler calls
 * it again to wire each section to the ones it waits for.
 */

/** One `{…}` slot of a section path. */
export type Placeholder =
  | { readonly kind: 'param', readonly name: string }
  | { readonly kind: 'section', readonly section: string, readonly path: readonly string[] }

/** A section path split into literals and placeholders: `lit[0] ph[0] lit[1] … lit[n]`. */
export interface ParsedPath {
  readonly literals: readonly string[]
  readonly placeholders: readonly Placeholder[]
}

/** Splits `/inventory/{product.sku}?at={id}` into literals and placeholders. */
export function parsePath (path: string): ParsedPath {
  const literals: string[] = []
  const placeholders: Placeholder[] = []
  let last = 0
  for (const m of path.matchAll(/\{([^}]*)\}/g)) {
    literals.push(path.slice(last, m.index))
    placeholders.push(placeholder(m[1]!))
    last = m.index + m[0].length
  }
  literals.push(path.slice(last))
  return { literals, placeholders }
}

function placeholder (text: string): Placeholder {
  const dot = text.indexOf('.')
  if (dot === -1) return { kind: 'param', name: text }
  return { kind: 'section', section: text.slice(0, dot), path: text.slice(dot + 1).split('.') }
}

/** A problem with one section: reported at `routes[N].sections.<section>`. */
export interface GraphIssue {
  section: string
  message: string
}

export interface SectionGraph {
  /** Section names in config order. */
  readonly names: readonly string[]
  /** For each section (config order), the indexes of the sections it waits for. */
  readonly deps: ReadonlyArray<readonly number[]>
  /** For each section, the indexes of the sections that wait for it. */
  readonly dependents: ReadonlyArray<readonly number[]>
  readonly issues: readonly GraphIssue[]
}

/**
 * Builds the graph of `sections` (name -> path, config order). Unknown
 * section names, a section naming itself, empty field paths and cycles are
 * issues; a cycle is reported once, at its first section in config order,
 * naming the whole loop.
 */
export function buildGraph (sections: ReadonlyArray<readonly [string, string]>): SectionGraph {
  const names = sections.map(([n]) => n)
  const index = new Map(names.map((n, i) => [n, i]))
  const issues: GraphIssue[] = []
  const deps: number[][] = []
  const dependents: number[][] = names.map(() => [])
  sections.forEach(([name, path], i) => {
    const mine = new Set<number>()
    for (const p of parsePath(path).placeholders) {
      if (p.kind !== 'section') continue
      const j = index.get(p.section)
      if (p.path.some((seg) => seg === '')) {
        issues.push({ section: name, message: `placeholder {${p.section}.${p.path.join('.')}} has an empty field name` })
      } else if (j === undefined) {
        issues.push({ section: name, message: `placeholder {${p.section}.${p.path.join('.')}} names unknown section "${p.section}" (sections: ${names.join(', ')})` })
      } else if (j === i) {
        issues.push({ section: name, message: `cycle: section ${name} names itself in {${p.section}.${p.path.join('.')}}` })
      } else {
        mine.add(j)
      }
    }
    deps.push([...mine].sort((a, b) => a - b))
  })
  for (let i = 0; i < deps.length; i++) for (const j of deps[i]!) dependents[j]!.push(i)
  for (const loop of cycles(deps)) {
    const members = loop.sort((a, b) => a - b).map((k) => names[k]!)
    issues.push({ section: members[0]!, message: `cycle: sections ${members.join(', ')} wait for each other` })
  }
  return { names, deps, dependents, issues }
}

/** Every strongly connected component with more than one section (Tarjan). */
function cycles (deps: ReadonlyArray<readonly number[]>): number[][] {
  const n = deps.length
  const idx = new Array<number>(n).fill(-1)
  const low = new Array<number>(n).fill(0)
  const onStack = new Array<boolean>(n).fill(false)
  const stack: number[] = []
  const out: number[][] = []
  let counter = 0
  const visit = (v: number): void => {
    idx[v] = low[v] = counter++
    stack.push(v)
    onStack[v] = true
    for (const w of deps[v]!) {
      if (idx[w] === -1) {
        visit(w)
        low[v] = Math.min(low[v]!, low[w]!)
      } else if (onStack[w]) {
        low[v] = Math.min(low[v]!, idx[w]!)
      }
    }
    if (low[v] === idx[v]) {
      const scc: number[] = []
      let w: number
      do {
        w = stack.pop()!
        onStack[w] = false
        scc.push(w)
      } while (w !== v)
      if (scc.length > 1) out.push(scc)
    }
  }
  // Config sizes are small (a handful of sections): recursion depth is bounded by them.
  for (let v = 0; v < n; v++) if (idx[v] === -1) visit(v)
  return out
}
