/**
 * Cluster workers and their primary share one stdout: a write(2) of at most
 * PIPE_BUF bytes to a pipe is atomic, so a logger built for a shared stdout
 * (`createLogger(level, { shared: true })`) must never write more at once.
 * The real logger runs in a child under strace, which records the size of
 * every write to fd 1. Skipped where strace is not installed.
 */
import t from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { root, childEnv } from './helpers/cli.js'
import { PIPE_BUF } from '../src/log.js'

const hasStrace = spawnSync('strace', ['-V']).status === 0

/** Sizes of the child's write(2) calls on stdout while it logs `lines` lines of ~1.3 KB. */
function writeSizes (shared: boolean, lines: number): number[] {
  const dir = mkdtempSync(join(tmpdir(), 'lattice-gateway-strace-'))
  try {
    const trace = join(dir, 'trace.txt')
    const script = `import { createLogger } from ${JSON.stringify(join(root, 'src/log.ts'))}
const log = createLogger('info', { shared: ${shared} })
const pad = 'y'.repeat(1200)
for (let i = 0; i < ${lines}; i++) log.info({ i, pad }, 'line')`
    execFileSync('strace', ['-f', '-qq', '-e', 'trace=write', '-e', 'signal=none', '-s', '0', '-o', trace, process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, env: childEnv, stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 1 << 20 })
    return readFileSync(trace, 'utf8').split('\n').flatMap((l) => {
      const m = /write\(1,.*\)\s+=\s+(\d+)$/.exec(l)
      return m === null ? [] : [Number(m[1])]
    })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

t.test('a shared stdout gets whole lines in writes of at most PIPE_BUF bytes', { skip: hasStrace ? false : 'strace is not installed' }, async (t) => {
  const shared = writeSizes(true, 2000)
  t.ok(shared.length > 100, `${shared.length} writes seen`)
  t.ok(shared.every((n) => n <= PIPE_BUF), `largest write ${Math.max(...shared)} bytes <= ${PIPE_BUF}`)
  t.equal(shared.reduce((a, b) => a + b, 0) > 2000 * 1200, true, 'every line was written')
  // The check can fail: a process alone on its stdout batches more per write.
  const alone = writeSizes(false, 2000)
  t.ok(alone.some((n) => n > PIPE_BUF), `unshared, writes grow past PIPE_BUF (largest ${Math.max(...alone)})`)
})
