/**
 * Request coalescing (singleflight, SPEC §12): concurrent calls with the
 * same key share one run of the work. The first caller (the leader) runs
 * it; callers arriving while it runs (followers) get the leader's own
 * outcome — its bytes, or its failure — never a call of their own and
 * never a hang: the entry is removed when the run settles, whichever way.
 */
export class Singleflight<T> {
  readonly #calls = new Map<string, Promise<T>>()

  /** Runs `fn` for `key`, or joins the run already in progress; `leader` says which. */
  run (key: string, fn: () => Promise<T>): { promise: Promise<T>, leader: boolean } {
    const existing = this.#calls.get(key)
    if (existing !== undefined) return { promise: existing, leader: false }
    let promise: Promise<T>
    try {
      promise = fn()
    } catch (err) {
      promise = Promise.reject(err)
    }
    const calls = this.#calls
    const clear = (): void => { if (calls.get(key) === promise) calls.delete(key) }
    promise.then(clear, clear)
    calls.set(key, promise)
    return { promise, leader: true }
  }

  /** Runs in progress. */
  get size (): number { return this.#calls.size }
}
