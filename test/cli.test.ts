/**
 * The `lattice-gateway` command as an operator runs it (SPEC §2): `check`
 * exits 0 or 1 and prints every error with its path; a missing file or an
 * unknown argument exits 1; a port that cannot be bound exits 2.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { root, childEnv } from './helpers/cli.js'

// Child processes start slowly on a busy machine: room for it.
t.setTimeout(300000)

const dir = mkdtempSync(join(tmpdir(), 'lattice-gateway-cli-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

interface Run { code: number | null, stdout: string, stderr: string }

/** Runs the CLI from source, as `npx lattice-gateway ...` would; kills it after `timeoutMs`. */
function cli (args: string[], timeoutMs = 120000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: root, env: { ...childEnv, GATEWAY_ADMIN_TOKEN: '' }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

function file (name: string, text: string): string {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

const good = file('good.yaml', `
server:
  port: 8080
admin:
  token: \${GATEWAY_ADMIN_TOKEN}
services:
  product:
    origins:
      primary: http://127.0.0.1:9101
      secondary: http://127.0.0.1:9102
routes:
  - type: proxy
    prefix: /api/products
    service: product
    rewritePrefix: /products
`)

const bad = file('bad.yaml', `
server:
  port: 99999
services:
  product:
    healthChek: {}
    healthCheck:
      intervalMs: 10
    origins:
      primary: not-a-url
  inventory: {}
routes:
  - type: proxy
    prefix: /api/reviews
    service: review
`)

t.test('check: a valid file exits 0', async (t) => {
  const r = await cli(['check', good])
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
  t.match(r.stdout, `${good}: ok`)
  t.equal(r.stderr, '')
})

t.test('check: an invalid file exits 1 and prints every error with its path', async (t) => {
  const r = await cli(['check', bad])
  t.equal(r.code, 1)
  for (const line of [
    'server.port: must be <= 65535',
    'services.product.healthChek: unknown key',
    'services.product.healthCheck.intervalMs: must be >= 50',
    'services.product.origins.primary: not a URL',
    'services.inventory: needs "origins"',
    'routes[0].service: unknown service "review"'
  ]) t.match(r.stderr, line, line)
  t.match(r.stderr, bad, 'names the file')
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
  t.equal(r.stdout, '')
})

t.test('a missing config file exits 1 and names it', async (t) => {
  const missing = join(dir, 'nope.yaml')
  const [checked, run] = await Promise.all([cli(['check', missing]), cli(['--config', missing])])
  for (const r of [checked, run]) {
    t.equal(r.code, 1)
    t.match(r.stderr, missing)
    t.match(r.stderr, /cannot read config file/)
  }
})

t.test('unknown arguments exit 1 with the usage', async (t) => {
  const runs = await Promise.all([cli(['--bogus']), cli(['frobnicate'])])
  for (const r of runs) {
    t.equal(r.code, 1, 'exit 1', { stderr: r.stderr })
    t.match(r.stderr, /usage:/)
  }
  t.match(runs[0]!.stderr, /bogus/)
  t.match(runs[1]!.stderr, /unknown command "frobnicate"/)
})

t.test('a port already taken exits 2', async (t) => {
  const holder = createServer()
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', () => resolve()))
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())))
  const port = (holder.address() as AddressInfo).port
  const f = file('taken.yaml', `
server:
  host: 127.0.0.1
  port: ${port}
admin:
  host: 127.0.0.1
  port: 0
services:
  product:
    origins:
      primary: http://127.0.0.1:9101
`)
  const r = await cli(['--config', f])
  t.equal(r.code, 2, 'exit 2', { stdout: r.stdout, stderr: r.stderr })
  t.match(r.stdout + r.stderr, /EADDRINUSE/, 'says why')
})
