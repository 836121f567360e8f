/**
 * The one polling wait of the tests, for conditions no event reports (a
 * child's log lines, an HTTP status, a counter). Where an event exists,
 * wait on the event instead (`once(emitter, name)`, `waitForLog`).
 */

export interface UntilOptions {
  /** Give up after this long (generous by default: the machine may be busy). */
  timeoutMs?: number
  /** How often to check. */
  intervalMs?: number
  /** Named in the timeout error. */
  what?: string
}

type Met<T> = Exclude<T, false | null | undefined>

/**
 * Resolves with the first value of `cond` that is not false, null or
 * undefined; rejects after `timeoutMs` (default 60 s). Bounded: at most
 * one pending check at a time.
 */
export async function until<T> (cond: () => T | Promise<T>, opts: UntilOptions = {}): Promise<Met<T>> {
  const timeoutMs = opts.timeoutMs ?? 60000
  const intervalMs = opts.intervalMs ?? 10
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v !== false && v !== null && v !== undefined) return v as Met<T>
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what ?? 'a condition'}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}
