// Drives the real `yjs` and `y-websocket` packages against a running Lintel:
//   node yjs.mjs <ws base, e.g. ws://127.0.0.1:PORT/v1/yjs> <room> <writer token>
//                <second writer token> <late writer token> <reader token>
// Tokens are realtime tokens (POST /v1/realtime/token), passed as `params: {token}`.
// Prints a JSON report on stdout; exits non-zero when a step times out.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [base, room, tokenA, tokenB, tokenC, tokenR] = process.argv.slice(2)

function client (token) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(base, room, doc, {
    WebSocketPolyfill: WebSocket,
    params: { token },
    disableBc: true
  })
  return { doc, provider, text: doc.getText('content') }
}

function until (what, check, ms = 10000) {
  return new Promise((resolve, reject) => {
    const start = Date.now()
    const tick = () => {
      if (check()) return resolve()
      if (Date.now() - start > ms) return reject(new Error(`timed out: ${what}`))
      setTimeout(tick, 20)
    }
    tick()
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

try {
  const a = client(tokenA)
  const b = client(tokenB)
  await until('a and b synced', () => a.provider.synced && b.provider.synced)
  // Concurrent edits from both writers.
  a.text.insert(0, 'alpha ')
  b.text.insert(0, 'beta ')
  await until('a and b converge', () =>
    a.text.toString() === b.text.toString() && a.text.length === 11)
  // B goes offline and keeps editing; A edits meanwhile.
  b.provider.disconnect()
  b.text.insert(b.text.length, 'offline-b ')
  a.text.insert(a.text.length, 'online-a ')
  await sleep(300)
  const whileOffline = b.text.toString().includes('online-a')
  b.provider.connect()
  await until('b back and converged', () =>
    a.text.toString() === b.text.toString() &&
    a.text.toString().includes('offline-b') &&
    b.text.toString().includes('online-a'))
  // A late joiner receives the whole state.
  const c = client(tokenC)
  await until('c synced with everything', () =>
    c.provider.synced && c.text.toString() === a.text.toString())
  // A reader's edit is not applied.
  const r = client(tokenR)
  await until('reader synced', () => r.provider.synced && r.text.toString() === a.text.toString())
  r.text.insert(0, 'READER ')
  await sleep(800)
  const readerApplied = a.text.toString().includes('READER') || c.text.toString().includes('READER')
  const report = {
    text: a.text.toString(),
    sameEverywhere: [b, c].every((x) => x.text.toString() === a.text.toString()),
    sawOnlineWhileOffline: whileOffline,
    readerApplied
  }
  for (const x of [a, b, c, r]) x.provider.destroy()
  // Let the sockets close before printing.
  await sleep(200)
  process.stdout.write(JSON.stringify(report))
  process.exit(0)
} catch (e) {
  process.stderr.write(String(e && e.stack ? e.stack : e))
  process.exit(1)
}
