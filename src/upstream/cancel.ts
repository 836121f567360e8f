/**
 * A caller's cancellation (the aggregate route's deadline) in the shape
 * undici and the send primitive read from an AbortSignal — `aborted`,
 * `reason`, add/removeEventListener('abort') — without EventTarget's cost:
 * there is one per aggregate request and a listener per section attempt.
 */
export class Cancellation {
  aborted = false
  reason: unknown = undefined
  #listeners: Array<() => void> = []

  abort (reason: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const listeners = this.#listeners
    this.#listeners = []
    for (const fn of listeners) fn()
  }

  addEventListener (_type: 'abort', fn: () => void): void {
    if (!this.aborted) this.#listeners.push(fn)
  }

  removeEventListener (_type: 'abort', fn: () => void): void {
    const i = this.#listeners.indexOf(fn)
    if (i !== -1) this.#listeners.splice(i, 1)
  }
}

/** What the send primitive needs of a caller's signal: an AbortSignal or a Cancellation. */
export interface CancelSignal {
  readonly aborted: boolean
  readonly reason: unknown
  addEventListener(type: 'abort', fn: () => void, opts?: { once: boolean }): void
  removeEventListener(type: 'abort', fn: () => void): void
}
