/**
 * Duplicate keys in a JSON text, at any nesting level. `JSON.parse` keeps
 * the last of two equal keys without a word, yet log pipelines (e.g.
 * Elasticsearch, OpenSearch) reject such documents: this scanner walks the
 * text itself. It also rejects what is not one valid JSON value.
 */

/** The duplicated keys of `text` as `path.key` strings (empty when none); throws on invalid JSON. */
export function duplicateKeys (text: string): string[] {
  let i = 0
  const found: string[] = []
  const fail = (what: string): never => { throw new SyntaxError(`${what} at offset ${i} in ${text.slice(0, 200)}`) }
  const ws = (): void => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++ }
  const str = (): string => {
    const start = i
    if (text[i] !== '"') fail('expected a string')
    i++
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1
    if (i >= text.length) fail('unterminated string')
    i++
    return JSON.parse(text.slice(start, i)) as string
  }
  const value = (path: string): void => {
    ws()
    const c = text[i]
    if (c === '{') {
      i++
      const seen = new Set<string>()
      ws()
      if (text[i] === '}') { i++; return }
      for (;;) {
        ws()
        const key = str()
        if (seen.has(key)) found.push(path === '' ? key : `${path}.${key}`)
        seen.add(key)
        ws()
        if (text[i] !== ':') fail('expected ":"')
        i++
        value(path === '' ? key : `${path}.${key}`)
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === '}') { i++; return }
        fail('expected "," or "}"')
      }
    } else if (c === '[') {
      i++
      ws()
      if (text[i] === ']') { i++; return }
      for (let n = 0; ; n++) {
        value(`${path}[${n}]`)
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === ']') { i++; return }
        fail('expected "," or "]"')
      }
    } else if (c === '"') {
      str()
    } else {
      const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400))
      if (m === null) fail('expected a value')
      i += m![0].length
    }
  }
  value('')
  ws()
  if (i !== text.length) fail('trailing text')
  // Whatever the scanner accepted, JSON.parse must accept too.
  JSON.parse(text)
  return found
}
