/**
 * The bench runner: `npm run bench -- [scenario|all] [flags]`.
 *
 * Builds dist/ when it is missing or older than the sources (the gateway
 * and the bench's helper processes run compiled), pins this process — the
 * load generator — to its own CPU, then runs one scenario module
 * (bench/<name>.ts, exporting `run(args)`) or, with no name or `all`,
 * every scenario present in SCENARIOS order. Flags after the name go to
 * the scenario; see bench/README.md.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { ROOT, ensureBuilt, pinSelfToLoadCpu, pinning, stopAll } from './lib.js'

/** Every scenario, in the order `all` runs them. */
export const SCENARIOS = ['passthrough', 'aggregate', 'failover', 'cutover', 'soak', 'workers', 'attack', 'fleet', 'rollout'] as const

const COMMON_FLAGS = new Set(['--duration', '--reps', '--connections', '--warmup'])

interface ScenarioModule { run(args: string[]): Promise<void> }

function isScenarioModule (m: unknown): m is ScenarioModule {
  return typeof m === 'object' && m !== null && typeof (m as { run?: unknown }).run === 'function'
}

async function main (argv: string[]): Promise<number> {
  const first = argv[0]
  const named = first !== undefined && !first.startsWith('-')
  const name = named ? first : 'all'
  const args = named ? argv.slice(1) : argv
  if (name === 'help' || args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`usage: npm run bench -- [${SCENARIOS.join('|')}|all] [--duration S] [--reps N] [--connections C] [--warmup S] [scenario flags]\nsee bench/README.md\n`)
    return 0
  }
  const file = (s: string): string => join(ROOT, 'bench', `${s}.ts`)
  let chosen: string[]
  if (name === 'all') {
    chosen = SCENARIOS.filter((s) => existsSync(file(s)))
    const missing = SCENARIOS.filter((s) => !chosen.includes(s))
    if (missing.length > 0) process.stderr.write(`skipping scenarios not written yet: ${missing.join(', ')}\n`)
    // Every scenario gets the same flags, so only the shared ones make sense here.
    const own = args.filter((a) => a.startsWith('--') && !COMMON_FLAGS.has(a.split('=')[0]!))
    if (own.length > 0) {
      process.stderr.write(`with "all", only ${[...COMMON_FLAGS].join(' ')} apply; run one scenario for ${own.join(' ')}\n`)
      return 1
    }
  } else if ((SCENARIOS as readonly string[]).includes(name) && existsSync(file(name))) {
    chosen = [name]
  } else {
    process.stderr.write(`unknown scenario "${name}"; available: ${SCENARIOS.filter((s) => existsSync(file(s))).join(', ')}\n`)
    return 1
  }

  ensureBuilt()
  pinSelfToLoadCpu()
  process.stdout.write(`lattice-gateway bench — ${new Date().toISOString()}, node ${process.version}, ${pinning.note}\n`)
  for (const s of chosen) {
    const mod: unknown = await import(pathToFileURL(file(s)).href)
    if (!isScenarioModule(mod)) throw new Error(`bench/${s}.ts does not export run(args)`)
    await mod.run(args)
    await stopAll()
  }
  return 0
}

// Exit explicitly: a load generator's leftover sockets must not keep the runner alive.
main(process.argv.slice(2)).then((code) => {
  process.exit(code)
}, async (err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  await stopAll().catch(() => {})
  process.exit(1)
})
