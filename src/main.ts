#!/usr/bin/env node
/**
 * The `lattice-gateway` command (SPEC §2).
 *
 *   lattice-gateway                     the demo: demo upstreams + gateway on loopback
 *   lattice-gateway --config FILE       run with a config file
 *   lattice-gateway check FILE          validate a config file; exit 0 or 1
 *   lattice-gateway migrate --config F  create the fleet store's tables; exit 0 (2: store unreachable)
 *
 * Exit codes: 0 normal stop, 1 invalid config or arguments, 2 a port could
 * not be bound. SIGTERM/SIGINT drain: stop accepting, let in-flight
 * requests finish (up to `server.shutdownGraceMs`), close pools, exit 0.
 */
import { parseArgs } from 'node:util'
import { availableParallelism } from 'node:os'
import { loadConfigFile, ConfigError } from './config/load.js'
import type { GatewayConfig } from './config/schema.js'
import { buildGateway, type Gateway } from './app.js'
import { demoBanner, demoConfig } from './demo/config.js'
import { startDemoUpstreams, type DemoUpstream } from './demo/upstreams.js'
import type { WorkerRole } from './cluster.js'

const USAGE = `usage:
  lattice-gateway [--config FILE]     run (no config: the demo)
  lattice-gateway check FILE          validate FILE and exit 0 (valid) or 1
  lattice-gateway migrate --config FILE
                                      create the fleet store's tables (fleet.url) and exit 0
  lattice-gateway --help`

async function main (argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, demo: { type: 'boolean' } } })
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`)
    return 1
  }
  const { values, positionals } = parsed
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    return 0
  }
  if (positionals[0] === 'check') {
    const file = positionals[1] ?? values.config
    if (file === undefined || positionals.length > 2) {
      process.stderr.write(`check needs exactly one FILE\n${USAGE}\n`)
      return 1
    }
    try {
      const config = loadConfigFile(file)
      process.stdout.write(`${file}: ok (${Object.keys(config.services).length} services, ${config.routes.length} routes)\n`)
      return 0
    } catch (err) {
      return reportConfigError(err)
    }
  }
  if (positionals[0] === 'migrate') {
    const file = positionals[1] ?? values.config
    if (file === undefined || positionals.length > 2) {
      process.stderr.write(`migrate needs --config FILE\n${USAGE}\n`)
      return 1
    }
    let config: GatewayConfig
    try {
      config = loadConfigFile(file)
    } catch (err) {
      return reportConfigError(err)
    }
    if (config.fleet === undefined) {
      process.stderr.write(`${file}: no fleet in the config: nothing to migrate\n`)
      return 1
    }
    const { migrateStore } = await import('./fleet/fleet.js')
    const out = (line: string): void => { process.stdout.write(`${line}\n`) }
    const err = (line: string): void => { process.stderr.write(`${line}\n`) }
    const code = await migrateStore(config.fleet, out, err)
    if (code !== 0) return code
    // Rollouts (SPEC §11) keep their state in the same store.
    const { migrateRolloutStore } = await import('./rollout/lease.js')
    return migrateRolloutStore(config.fleet.url, out, err)
  }
  if (positionals.length > 0) {
    process.stderr.write(`unknown command "${positionals[0]}"\n${USAGE}\n`)
    return 1
  }

  let config: GatewayConfig
  let demo: DemoUpstream[] = []
  try {
    config = values.config === undefined ? demoConfig() : loadConfigFile(values.config)
  } catch (err) {
    return reportConfigError(err)
  }
  // --- multi-core (src/cluster.ts): only when server.workers > 1 ---
  const workers = config.server.workers === 'auto' ? availableParallelism() : config.server.workers
  if (workers > 1) {
    const cluster = await import('./cluster.js')
    if (cluster.isPrimary()) return cluster.runPrimary(config, workers)
    return run(config, [], cluster.workerRole(config))
  }
  // --- end multi-core ---
  if (values.config === undefined) {
    try {
      demo = await startDemoUpstreams()
    } catch (err) {
      process.stderr.write(`cannot start the demo upstreams: ${err instanceof Error ? err.message : String(err)}\n`)
      return 2
    }
  }
  return run(config, demo)
}

function reportConfigError (err: unknown): number {
  if (err instanceof ConfigError) {
    process.stderr.write(`${err.message}\n`)
    return 1
  }
  throw err
}

/** Runs the gateway in this process; `role` when it is one worker of a cluster (src/cluster.ts). */
async function run (config: GatewayConfig, demo: DemoUpstream[], role: WorkerRole | null = null): Promise<number> {
  const gw: Gateway = await buildGateway(config, role?.build)
  const log = gw.logger
  const closeDemo = async (): Promise<void> => { await Promise.all(demo.map((u) => u.close())) }
  try {
    await role?.prepare(gw)
    // In a cluster one worker holds the admin listener, on a socket of its
    // own (`exclusive`), not one shared through the primary like the public port.
    if (role === null || role.admin) await gw.admin.listen({ host: config.admin.host, port: config.admin.port, exclusive: role !== null, listenTextResolver: (a) => `admin listening on ${a}` })
    await gw.app.listen({ host: config.server.host, port: config.server.port, listenTextResolver: (a) => `gateway listening on ${a}` })
  } catch (err) {
    log.fatal({ err }, 'cannot listen')
    await gw.close().catch(() => {})
    await closeDemo()
    return 2
  }
  gw.markListening()
  gw.start()
  role?.listening()
  if (demo.length > 0) {
    const addr = gw.app.server.address()
    const port = typeof addr === 'object' && addr !== null ? addr.port : config.server.port
    process.stdout.write(demoBanner(port, config.admin.port, config.admin.token))
  }

  return new Promise<number>((resolve) => {
    let stopping = false
    const stop = (signal: string): void => {
      if (stopping) {
        // `npm start` under a terminal delivers Ctrl-C twice (to npm, which
        // forwards it, and to the gateway): a repeat cuts the wait short
        // but is still a normal stop.
        log.warn({ signal }, 'signal repeated: closing the remaining connections now')
        gw.app.server.closeAllConnections()
        return
      }
      stopping = true
      log.info({ signal, graceMs: config.server.shutdownGraceMs }, 'draining: no new connections, finishing in-flight requests')
      const force = setTimeout(() => {
        log.warn('shutdown grace period over: closing remaining connections')
        gw.app.server.closeAllConnections()
      }, config.server.shutdownGraceMs)
      force.unref()
      // server.close() waits for every open connection, and a keep-alive
      // client whose request finished during the drain would hold it until
      // the grace period ends: close connections as soon as they are idle.
      const idle = setInterval(() => gw.app.server.closeIdleConnections(), 50)
      idle.unref()
      gw.close()
        .then(closeDemo)
        .then(() => {
          clearTimeout(force)
          clearInterval(idle)
          log.info('stopped')
          resolve(0)
        }, (err: unknown) => {
          clearInterval(idle)
          log.error({ err }, 'error while stopping')
          resolve(0)
        })
    }
    process.on('SIGTERM', () => stop('SIGTERM'))
    process.on('SIGINT', () => stop('SIGINT'))
    // A cluster's primary asks once; a worker already draining (Ctrl-C reaches the whole process group) goes on.
    role?.onStop((reason) => { if (!stopping) stop(reason) })
  })
}

main(process.argv.slice(2)).then((code) => {
  // Let pino flush, then leave with the code.
  setImmediate(() => process.exit(code))
}, (err: unknown) => {
  process.stderr.write(`lattice-gateway: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exit(1)
})
