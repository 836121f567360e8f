/**
 * Checks that bytes are one JSON text (RFC 8259) without building it.
 *
 * The aggregator splices a section's own bytes into the merged answer, so
 * it needs a yes/no, not a value: `JSON.parse` would allocate every object,
 * array and string of the section only to drop them. This is a single pass
 * over the bytes with an explicit stack of open containers (no recursion,
 * so depth cannot overflow the call stack). Bytes >= 0x80 are accepted
 * inside strings only; whether they are valid UTF-8 is checked separately
 * (`isUtf8`). It accepts exactly what `JSON.parse` accepts (property-tested
 * against it in test/aggregate-plan.test.ts).
 */

// Byte values.
const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c
const COLON = 0x3a
const LBRACKET = 0x5b
const RBRACKET = 0x5d
const LBRACE = 0x7b
const RBRACE = 0x7d
const MINUS = 0x2d
const PLUS = 0x2b
const DOT = 0x2e
const ZERO = 0x30
const NINE = 0x39

// Open containers, on the stack.
const IN_ARRAY = 0
const IN_OBJECT = 1

// Escape characters after a backslash: " \ / b f n r t (u is handled apart).
const SIMPLE_ESCAPE = new Uint8Array(256)
for (const c of '"\\/bfnrt') SIMPLE_ESCAPE[c.charCodeAt(0)] = 1
const HEX = new Uint8Array(256)
for (const c of '0123456789abcdefABCDEF') HEX[c.charCodeAt(0)] = 1

/** True when `b` is exactly one JSON value, optionally surrounded by whitespace. */
export function isJsonText (b: Uint8Array): boolean {
  const n = b.length
  const stack: number[] = []
  let i = ws(b, 0, n)
  for (;;) {
    // A value starts at i.
    if (i >= n) return false
    const c = b[i]!
    if (c === LBRACE) {
      i = ws(b, i + 1, n)
      if (i < n && b[i] === RBRACE) {
        i++
      } else {
        stack.push(IN_OBJECT)
        i = key(b, i, n)
        if (i < 0) return false
        continue
      }
    } else if (c === LBRACKET) {
      i = ws(b, i + 1, n)
      if (i < n && b[i] === RBRACKET) {
        i++
      } else {
        stack.push(IN_ARRAY)
        continue
      }
    } else if (c === QUOTE) {
      i = string(b, i, n)
    } else if (c === MINUS || (c >= ZERO && c <= NINE)) {
      i = number(b, i, n)
    } else if (c === 0x74 /* t */) {
      i = literal(b, i, n, 0x72, 0x75, 0x65, -1) // true
    } else if (c === 0x66 /* f */) {
      i = literal(b, i, n, 0x61, 0x6c, 0x73, 0x65) // false
    } else if (c === 0x6e /* n */) {
      i = literal(b, i, n, 0x75, 0x6c, 0x6c, -1) // null
    } else {
      return false
    }
    if (i < 0) return false
    // After a value: a separator, a closing bracket, or the end.
    for (;;) {
      i = ws(b, i, n)
      if (stack.length === 0) return i === n
      if (i >= n) return false
      const d = b[i]!
      const top = stack[stack.length - 1]
      if (d === COMMA) {
        i = ws(b, i + 1, n)
        if (top === IN_OBJECT) {
          i = key(b, i, n)
          if (i < 0) return false
        }
        break
      }
      if ((top === IN_ARRAY && d === RBRACKET) || (top === IN_OBJECT && d === RBRACE)) {
        stack.pop()
        i++
        continue
      }
      return false
    }
  }
}

/** Skips JSON whitespace (space, tab, LF, CR). */
function ws (b: Uint8Array, i: number, n: number): number {
  while (i < n) {
    const c = b[i]!
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break
    i++
  }
  return i
}

/** An object key, the colon and the whitespace after it; the index of the value, or -1. */
function key (b: Uint8Array, i: number, n: number): number {
  if (i >= n || b[i] !== QUOTE) return -1
  i = string(b, i, n)
  if (i < 0) return -1
  i = ws(b, i, n)
  if (i >= n || b[i] !== COLON) return -1
  return ws(b, i + 1, n)
}

/** A string starting at the quote at i; the index after its closing quote, or -1. */
function string (b: Uint8Array, i: number, n: number): number {
  i++
  while (i < n) {
    const c = b[i]!
    if (c === QUOTE) return i + 1
    if (c === BACKSLASH) {
      if (i + 1 >= n) return -1
      const e = b[i + 1]!
      if (SIMPLE_ESCAPE[e] === 1) {
        i += 2
      } else if (e === 0x75 /* u */) {
        if (i + 5 >= n || HEX[b[i + 2]!] !== 1 || HEX[b[i + 3]!] !== 1 || HEX[b[i + 4]!] !== 1 || HEX[b[i + 5]!] !== 1) return -1
        i += 6
      } else {
        return -1
      }
    } else if (c < 0x20) {
      return -1
    } else {
      i++
    }
  }
  return -1
}

/** A number at i: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?; the index after it, or -1. */
function number (b: Uint8Array, i: number, n: number): number {
  if (b[i] === MINUS) i++
  if (i >= n) return -1
  let c = b[i]!
  if (c === ZERO) {
    i++
  } else if (c >= 0x31 && c <= NINE) {
    i++
    while (i < n && (c = b[i]!) >= ZERO && c <= NINE) i++
  } else {
    return -1
  }
  if (i < n && b[i] === DOT) {
    i++
    const start = i
    while (i < n && (c = b[i]!) >= ZERO && c <= NINE) i++
    if (i === start) return -1
  }
  if (i < n && (b[i] === 0x65 || b[i] === 0x45) /* e E */) {
    i++
    if (i < n && (b[i] === PLUS || b[i] === MINUS)) i++
    const start = i
    while (i < n && (c = b[i]!) >= ZERO && c <= NINE) i++
    if (i === start) return -1
  }
  return i
}

/** `true`, `false` or `null` at i (first byte already matched); the index after it, or -1. */
function literal (b: Uint8Array, i: number, n: number, c1: number, c2: number, c3: number, c4: number): number {
  const len = c4 === -1 ? 4 : 5
  if (i + len > n || b[i + 1] !== c1 || b[i + 2] !== c2 || b[i + 3] !== c3) return -1
  if (c4 !== -1 && b[i + 4] !== c4) return -1
  return i + len
}
