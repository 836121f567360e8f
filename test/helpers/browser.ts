/**
 * Chromium for the console's browser tests: Debian's package driven by
 * playwright-core. Without a browser at /usr/bin/chromium (or
 * $CHROMIUM_PATH) the tests are skipped with the reason and how to install
 * one, unless LATTICE_GATEWAY_REQUIRE_BROWSER=1 (as `.ci/run` sets): then a
 * missing browser is a failure.
 *
 * `guard()` routes every request of a context through the test: one for a
 * host other than 127.0.0.1 is recorded (and aborted). `watch()` records a
 * page's console and page errors, except the browser's own "Failed to load
 * resource" line for an admin API answer the test provoked on purpose.
 */
import { existsSync } from 'node:fs'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
export const REQUIRED = process.env.LATTICE_GATEWAY_REQUIRE_BROWSER === '1'
export const HAVE_BROWSER = existsSync(CHROMIUM)
export const MISSING = `no Chromium at ${CHROMIUM}: install it with \`apt-get install -y chromium\` (or set CHROMIUM_PATH) to run the console's browser tests`
/** The `skip` option of a browser test: the reason when there is no browser and none is required. */
export const SKIP_WITHOUT_BROWSER: string | false = !HAVE_BROWSER && !REQUIRED ? MISSING : false

/** Flags for a closed network: Chromium's own background connections stay off; root needs --no-sandbox. */
const ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', '--disable-default-apps', '--disable-extensions', '--mute-audio']

/** Launches the browser, or fails the test when it is required and missing. */
export async function launch (t: { fail(msg: string): void, teardown(fn: () => unknown): void }): Promise<Browser | null> {
  if (!HAVE_BROWSER) {
    t.fail(`LATTICE_GATEWAY_REQUIRE_BROWSER=1 and ${MISSING}`)
    return null
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true })
  t.teardown(() => browser.close())
  return browser
}

export interface Recorder {
  /** Requests to any host but 127.0.0.1. */
  foreign: string[]
  consoleErrors: string[]
  /** Browser "Failed to load resource" lines for answers the test provoked (allowed). */
  expectedFailures: string[]
}

export const recorder = (): Recorder => ({ foreign: [], consoleErrors: [], expectedFailures: [] })

/**
 * Routes every request of the context: loopback goes on (after `hold`, when
 * given, for the requests it names), anything else is recorded and aborted.
 * Routing turns the browser cache off for the context.
 */
export async function guard (context: BrowserContext, rec: Recorder, hold?: (req: { method: string, url: URL }) => Promise<void> | null): Promise<void> {
  await context.route('**/*', async (route) => {
    const url = new URL(route.request().url())
    if (url.hostname !== '127.0.0.1') {
      rec.foreign.push(route.request().url())
      await route.abort('blockedbyclient')
      return
    }
    const wait = hold?.({ method: route.request().method(), url }) ?? null
    if (wait !== null) await wait
    await route.continue()
  })
}

/** Records the page's console errors and page errors; `provoked` lists the admin paths whose 4xx the test asked for. */
export function watch (page: Page, rec: Recorder, provoked: RegExp[]): void {
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    const text = msg.text()
    const url = msg.location().url
    // Chromium logs every non-2xx fetch as "Failed to load resource"; those
    // the test asked for are expected, anything else is a real error.
    if (/^Failed to load resource: the server responded with a status of (401|404|409|412)/.test(text) &&
      url !== '' && provoked.some((p) => p.test(new URL(url).pathname))) {
      rec.expectedFailures.push(`${text} ${url}`)
      return
    }
    rec.consoleErrors.push(`${text} ${url}`)
  })
  page.on('pageerror', (err) => rec.consoleErrors.push(`page error: ${err.message}`))
}
