/**
 * Client-chosen fields (SPEC §12): on a route with `fields: true`,
 * `?fields=product.name,reviews` names the sections to return (a bare name
 * keeps the whole section) and the dotted paths inside them. Only the named
 * sections are called, plus the sections they wait for (called, then left
 * out of the answer). A name that is not a section is 400 GW_BAD_REQUEST
 * listing the valid ones.
 */
import { GatewayError } from '../errors.js'
import { compileSelect, type SelectTree } from './shape.js'

/** What one request asked for. */
export interface FieldSelection {
  /** Per section (config order): true when the answer carries it. */
  readonly shown: readonly boolean[]
  /** Per section: true when it is called (shown, or a shown section waits for it). */
  readonly called: readonly boolean[]
  /** Per section: the paths to keep (after the section's own shaping), or null for all of it. */
  readonly trim: ReadonlyArray<SelectTree | null>
}

/** The parts of a plan fields need: section names and what each waits for. */
export interface FieldsPlan {
  readonly sections: ReadonlyArray<{ readonly key: string, readonly deps: readonly number[] }>
}

const MAX_FIELDS_LENGTH = 4096

/**
 * Parses `?fields=` (a string, or several when repeated; undefined when
 * absent: null, everything). Throws GW_BAD_REQUEST for an unknown section,
 * an empty list or an empty path segment.
 */
export function parseFields (plan: FieldsPlan, raw: string | readonly string[] | undefined): FieldSelection | null {
  if (raw === undefined) return null
  const text = typeof raw === 'string' ? raw : raw.join(',')
  const sections = plan.sections
  const valid = (): string => sections.map((s) => s.key).join(', ')
  if (text.length > MAX_FIELDS_LENGTH) throw new GatewayError('GW_BAD_REQUEST', `fields is longer than ${MAX_FIELDS_LENGTH} characters`)
  const whole = new Array<boolean>(sections.length).fill(false)
  const paths: string[][][] = sections.map(() => [])
  const unknown: string[] = []
  let named = false
  for (const item of text.split(',')) {
    const f = item.trim()
    if (f === '') continue
    const parts = f.split('.')
    if (parts.some((p) => p === '')) throw new GatewayError('GW_BAD_REQUEST', `fields: "${f}" has an empty name; write section or section.path.to.field`)
    const i = sections.findIndex((s) => s.key === parts[0])
    if (i === -1) {
      if (!unknown.includes(parts[0]!)) unknown.push(parts[0]!)
      continue
    }
    named = true
    if (parts.length === 1) whole[i] = true
    else paths[i]!.push(parts.slice(1))
  }
  if (unknown.length > 0) {
    throw new GatewayError('GW_BAD_REQUEST', `fields names unknown section${unknown.length === 1 ? '' : 's'} ${unknown.map((u) => JSON.stringify(u)).join(', ')}; valid sections: ${valid()}`)
  }
  if (!named) throw new GatewayError('GW_BAD_REQUEST', `fields names no section; valid sections: ${valid()}`)
  const shown = sections.map((_s, i) => whole[i]! || paths[i]!.length > 0)
  const called = [...shown]
  // Everything a shown section waits for, transitively.
  const stack = shown.flatMap((on, i) => on ? [i] : [])
  while (stack.length > 0) {
    for (const d of sections[stack.pop()!]!.deps) {
      if (!called[d]) {
        called[d] = true
        stack.push(d)
      }
    }
  }
  const trim = sections.map((_s, i) => whole[i]! || paths[i]!.length === 0 ? null : compileSelect(paths[i]!))
  return { shown, called, trim }
}
