/**
 * Preloaded into the gateway when the bench starts it
 * (`node --import dist/bench/parent-watch.js dist/src/main.js ...`): when
 * the bench runner goes away — its end of our stdin closes, even after a
 * SIGKILL — the gateway gets SIGTERM and drains as usual, so no gateway
 * outlives a bench run. It adds one idle pipe read; nothing per request.
 */
const stop = (): void => { process.kill(process.pid, 'SIGTERM') }
process.stdin.once('end', stop)
process.stdin.once('error', stop)
process.stdin.resume()
// The pipe must not keep the gateway alive after its own shutdown.
;(process.stdin as { unref?: () => void }).unref?.()
