/**
 * The body of an upstream answer, fed by undici's dispatch handler with no
 * stream in between: the proxy relays chunks straight to the client's
 * socket, the aggregator collects them under a size cap. A Readable (what
 * undici's `request()` returns) costs a good share of a proxied request's
 * CPU; this is the small part of it those two consumers need.
 *
 * Flow control is undici's own: `pause()`/`resume()` reach the upstream
 * socket through the dispatch controller. Until a consumer is attached,
 * chunks are queued and the socket paused. The consumer is told
 * asynchronously, so it never runs inside undici's parser callbacks.
 */
import type { Dispatcher } from 'undici'

/** Receives a body: `data` returns false to pause until `resume()`. */
export interface BodySink {
  data(chunk: Buffer): boolean
  end(): void
  error(err: Error): void
}

const NO_SINK: BodySink = { data: () => true, end: () => {}, error: () => {} }
/** Past this many bytes, dumping a body costs more than a new connection. */
const DUMP_LIMIT = 128 * 1024

export class UpstreamBody {
  #controller: Dispatcher.DispatchController | null = null
  #sink: BodySink | null = null
  #queue: Buffer[] = []
  #paused = false
  #ended = false
  #error: Error | null = null
  #finished = false
  #scheduled = false
  #dumped = 0
  #onFinish: (() => void) | null = null

  /** True once the whole body was delivered, or it failed or was destroyed. */
  get finished (): boolean { return this.#finished }

  /** Starts delivering the body to `sink`. */
  consume (sink: BodySink): void {
    if (this.#sink !== null) throw new Error('an upstream body is consumed once')
    this.#sink = sink
    this.#schedule()
  }

  pause (): void {
    this.#paused = true
    this.#controller?.pause()
  }

  resume (): void {
    if (!this.#paused) return
    this.#paused = false
    this.#schedule()
  }

  /** Reads and discards the body; a large one is cut instead (its connection is closed). */
  dump (): Promise<void> {
    return new Promise((resolve) => {
      this.consume({
        data: (chunk) => {
          this.#dumped += chunk.length
          if (this.#dumped > DUMP_LIMIT) this.destroy()
          return true
        },
        end: resolve,
        error: () => resolve()
      })
    })
  }

  /** Stops the body (the upstream request is aborted); nothing more is delivered. */
  destroy (err?: Error): void {
    if (this.#finished) return
    const reason = err ?? Object.assign(new Error('upstream body discarded'), { code: 'GW_BODY_DISCARDED' })
    const sink = this.#sink
    this.#sink = NO_SINK
    this.#finish()
    this.#controller?.abort(reason)
    if (err !== undefined && sink !== null) sink.error(err)
  }

  /** Called once when the body is done, failed or destroyed (releases the attempt). */
  onFinish (fn: () => void): void {
    if (this.#finished) fn()
    else this.#onFinish = fn
  }

  // ---- producer side (the dispatch handler)

  /** @internal */
  attach (controller: Dispatcher.DispatchController): void {
    this.#controller = controller
    if (this.#sink === null || this.#paused) controller.pause()
  }

  /** @internal */
  push (chunk: Buffer): void {
    if (this.#finished) return
    if (this.#sink !== null && !this.#paused && this.#queue.length === 0 && !this.#scheduled) {
      if (!this.#sink.data(chunk)) this.pause()
      return
    }
    this.#queue.push(chunk)
    this.#controller?.pause()
  }

  /** @internal */
  end (): void {
    if (this.#finished) return
    this.#ended = true
    this.#schedule()
  }

  /** @internal */
  fail (err: Error): void {
    if (this.#finished) return
    this.#error = err
    this.#schedule()
  }

  #schedule (): void {
    if (this.#scheduled || this.#sink === null) return
    this.#scheduled = true
    process.nextTick(() => this.#flush())
  }

  #flush (): void {
    this.#scheduled = false
    const sink = this.#sink
    if (sink === null || this.#finished) return
    while (this.#queue.length > 0) {
      if (this.#paused) return
      if (!sink.data(this.#queue.shift()!)) {
        this.pause()
        return
      }
    }
    if (this.#paused) return
    if (this.#error !== null) {
      this.#finish()
      sink.error(this.#error)
    } else if (this.#ended) {
      this.#finish()
      sink.end()
    } else {
      this.#controller?.resume()
    }
  }

  #finish (): void {
    this.#finished = true
    this.#queue = []
    const fn = this.#onFinish
    this.#onFinish = null
    if (fn !== null) fn()
  }
}
