/**
 * What the gateway relies on beyond the documented APIs of two libraries,
 * pinned in package.json (`~`) for that reason. If an upgrade changes any
 * of it, this file fails before the gateway misbehaves.
 *
 * - opossum (src/upstream/outlier.ts): a successful attempt is reported by
 *   emitting the two events a successful `fire()` emits ('fire', then
 *   'success'), which opossum's rolling statistics count.
 * - pino (plugins/request-log.ts): the access line is written straight to
 *   the logger's stream (`pino.symbols.streamSym`) after the serialised
 *   bindings (`pino.symbols.chindingsSym`, a string of `,"key":value`).
 */
import t from 'tap'
import { Writable } from 'node:stream'
import CircuitBreaker from 'opossum'
import pino from 'pino'
import { loggerOptions } from '../src/log.js'

t.test('opossum: emitted fire/success events count as successful calls in the rolling window', async (t) => {
  const breaker = new CircuitBreaker((ok: boolean) => ok ? Promise.resolve() : Promise.reject(new Error('failed')), {
    timeout: false, errorThresholdPercentage: 50, volumeThreshold: 10, resetTimeout: 60000, rollingCountTimeout: 10000, rollingCountBuckets: 10, rollingPercentilesEnabled: false
  })
  t.teardown(() => breaker.shutdown())
  for (let i = 0; i < 12; i++) {
    breaker.emit('fire', [])
    breaker.emit('success', undefined, 0)
  }
  t.equal(breaker.stats.fires, 12, 'fires counted')
  t.equal(breaker.stats.successes, 12, 'successes counted')
  // 11 failures after 12 counted successes: 48 % < 50 %, the breaker stays closed.
  for (let i = 0; i < 11; i++) await breaker.fire(false).catch(() => {})
  t.equal(breaker.stats.failures, 11)
  t.equal(breaker.closed, true, 'the emitted successes weigh against the failures')
  await breaker.fire(false).catch(() => {})
  await breaker.fire(false).catch(() => {})
  t.equal(breaker.opened, true, 'past 50 % it opens')
})

t.test('pino: the stream and serialised-bindings symbols the access line writes through', async (t) => {
  let out = ''
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { out += chunk.toString(); cb() } })
  const logger = pino(loggerOptions('info'), sink).child({ listener: 'admin', n: 1 })
  const internals = logger as unknown as Record<symbol, unknown>
  t.equal(typeof pino.symbols.streamSym, 'symbol')
  t.equal(typeof pino.symbols.chindingsSym, 'symbol')
  const bindings = internals[pino.symbols.chindingsSym]
  t.equal(bindings, ',"name":"lattice-gateway","listener":"admin","n":1', 'bindings: the name, then the child\'s, as a `,"k":v` string')
  const stream = internals[pino.symbols.streamSym] as { write(line: string): unknown }
  stream.write(`{"level":30${String(bindings)},"msg":"direct"}\n`)
  logger.info('through pino')
  const lines = out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
  t.match(lines[0], { level: 30, name: 'lattice-gateway', listener: 'admin', n: 1, msg: 'direct' }, 'a direct write reaches the logger\'s destination')
  t.match(lines[1], { name: 'lattice-gateway', listener: 'admin', n: 1, msg: 'through pino' })
})
