/**
 * Header rules shared by every path that talks to an upstream: hop-by-hop
 * headers (RFC 9110 §7.6.1) never cross the gateway in either direction,
 * nor do the headers a `Connection` header names.
 */
import type { IncomingHttpHeaders } from 'node:http'

export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  // undici refuses `expect`; the gateway answers 100-continue itself.
  'expect'
])

/** Names listed in a Connection header (lower-cased), or null when there are none. */
export function connectionNamed (value: string | string[] | undefined): Set<string> | null {
  if (value === undefined || value === 'keep-alive' || value === 'close') return null
  const joined = Array.isArray(value) ? value.join(',') : value
  const names = new Set<string>()
  for (const part of joined.split(',')) {
    const n = part.trim().toLowerCase()
    if (n !== '' && n !== 'close' && n !== 'keep-alive') names.add(n)
  }
  return names.size === 0 ? null : names
}

/** Copies headers without hop-by-hop ones, `host`, and names in `skip`. */
export function endToEnd (headers: IncomingHttpHeaders, skip: ReadonlySet<string> | null = null): Record<string, string | string[]> {
  const named = connectionNamed(headers.connection)
  const out: Record<string, string | string[]> = {}
  for (const key in headers) {
    const v = headers[key]
    if (v === undefined || HOP_BY_HOP.has(key) || key === 'host') continue
    if (named !== null && named.has(key)) continue
    if (skip !== null && skip.has(key)) continue
    out[key] = v
  }
  return out
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/

/** The client's request id when it is sane, else null (a fresh one is generated). */
export function acceptRequestId (value: string | string[] | undefined): string | null {
  const v = Array.isArray(value) ? value[0] : value
  return v !== undefined && REQUEST_ID.test(v) ? v : null
}

/**
 * Compiles `names` (query parameters, case-insensitive) into a function
 * that writes their values in a URL as `[redacted]`; the rest of the URL is
 * kept byte for byte. A URL without `?` is returned as is. Null when no
 * name is configured.
 */
export function queryRedactor (names: readonly string[]): ((url: string) => string) | null {
  if (names.length === 0) return null
  const secret = new Set(names.map((n) => n.toLowerCase()))
  return (url) => {
    const q = url.indexOf('?')
    if (q === -1) return url
    const end = url.indexOf('#', q)
    const query = end === -1 ? url.slice(q + 1) : url.slice(q + 1, end)
    let changed = false
    const parts = query.split('&')
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!
      const eq = p.indexOf('=')
      const raw = eq === -1 ? p : p.slice(0, eq)
      let name: string
      try { name = decodeURIComponent(raw.replaceAll('+', ' ')) } catch { name = raw }
      if (secret.has(name.toLowerCase())) {
        parts[i] = `${raw}=[redacted]`
        changed = true
      }
    }
    if (!changed) return url
    return `${url.slice(0, q + 1)}${parts.join('&')}${end === -1 ? '' : url.slice(end)}`
  }
}
