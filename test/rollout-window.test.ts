/**
 * Rollout windows (src/rollout/window.ts): the log-linear histogram is
 * within its stated error, p99 comes from the buckets, counts add up across
 * processes and subtract between snapshots.
 */
import t from 'tap'
import { BUCKETS, bucketIndex, bucketUpper, DeploymentWindow, addCounts, subCounts, quantileMs, emptyCounts } from '../src/rollout/window.js'

t.test('every value falls in a bucket whose bounds hold it, at most 12.5 % wide', async (t) => {
  let bad = 0
  for (let us = 0; us < 5_000_000; us = us < 100 ? us + 1 : Math.ceil(us * 1.013)) {
    const i = bucketIndex(us)
    const upper = bucketUpper(i)
    const lower = i === 0 ? 0 : bucketUpper(i - 1)
    if (!(i >= 0 && i < BUCKETS && us >= lower && us < upper && (us < 16 || (upper - lower) / lower <= 0.125))) bad++
  }
  t.equal(bad, 0, 'no value outside its bucket')
  t.ok(bucketIndex(1e15) < BUCKETS, 'a huge value stays in the last bucket')
  t.equal(bucketIndex(-5), 0, 'a negative value is bucket 0')
})

t.test('p99 from the buckets is within the bucket error of the exact p99', async (t) => {
  const w = new DeploymentWindow()
  const values: number[] = []
  for (let i = 0; i < 1000; i++) {
    const ms = i < 985 ? 2 + (i % 50) / 10 : 80 + i % 15 // a slow 1.5 % tail
    values.push(ms)
    w.record(ms, i % 10 === 0)
  }
  values.sort((a, b) => a - b)
  const exact = values[Math.ceil(0.99 * values.length) - 1]!
  const p99 = quantileMs(w.counts(), 0.99)!
  t.ok(p99 >= exact && p99 <= exact * 1.125 + 0.001, `p99 ${p99} ms vs exact ${exact} ms`)
  const c = w.counts()
  t.equal(c.requests, 1000)
  t.equal(c.failures, 100)
  t.equal(quantileMs(emptyCounts(), 0.99), null, 'no data: no p99')
})

t.test('counts add up (two workers) and subtract (a step window)', async (t) => {
  const a = new DeploymentWindow()
  const b = new DeploymentWindow()
  for (let i = 0; i < 100; i++) a.record(1, false)
  for (let i = 0; i < 100; i++) b.record(100, true)
  const sum = addCounts(a.counts(), b.counts())
  t.equal(sum.requests, 200)
  t.equal(sum.failures, 100)
  t.ok(quantileMs(sum, 0.99)! >= 100, 'the merged p99 is the slow worker\'s')
  t.ok(quantileMs(sum, 0.4)! < 2, 'the merged p40 is the fast worker\'s')
  const before = a.counts()
  for (let i = 0; i < 10; i++) a.record(50, true)
  const d = subCounts(a.counts(), before)
  t.equal(d.requests, 10)
  t.equal(d.failures, 10)
  t.ok(quantileMs(d, 0.5)! >= 50 && quantileMs(d, 0.5)! < 57, 'the window holds only the new requests')
  t.equal(subCounts(emptyCounts(), before).requests, 0, 'a restarted process counts from 0')
  t.same(JSON.parse(JSON.stringify(sum)), sum, 'counts survive JSON')
})
