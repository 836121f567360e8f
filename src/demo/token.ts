/**
 * `npm run demo:token -- [sub] [scope]`: prints a demo bearer token (one
 * hour) for the demo's JWT-protected routes.
 */
import { mintDemoToken } from './auth.js'

const [sub, scope] = process.argv.slice(2)
process.stdout.write(`${await mintDemoToken(sub, scope)}\n`)
