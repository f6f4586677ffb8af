// A js-libp2p node for meshchat's interoperability test: it listens on
// 127.0.0.1, prints its address, and reports on stdout (one JSON object
// per line) what it sees. It speaks only standard protocols: TCP, Noise,
// Yamux, identify, ping and gossipsub (unsigned messages, as meshchat's).
// Node 20 has no Promise.withResolvers (newer libp2p uses it).
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((a, b) => { resolve = a; reject = b })
    return { promise, resolve, reject }
  }
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { gossipsub } = await import('@libp2p/gossipsub')

const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ globalSignaturePolicy: 'StrictNoSign', emitSelf: false })
  }
})
node.addEventListener('peer:identify', (e) => {
  say({ event: 'identify', peer: e.detail.peerId.toString(), agent: e.detail.agentVersion, protocols: e.detail.protocols })
})
node.addEventListener('peer:connect', async (e) => {
  const peer = e.detail
  say({ event: 'connected', peer: peer.toString() })
  try {
    const rtt = await node.services.ping.ping(peer)
    say({ event: 'ping', peer: peer.toString(), rtt_ms: rtt })
  } catch (err) {
    say({ event: 'ping_failed', peer: peer.toString(), error: String(err) })
  }
})
node.services.pubsub.subscribe('meshchat/1/presence')
node.services.pubsub.addEventListener('subscription-change', (e) => {
  say({ event: 'subscriptions', peer: e.detail.peerId.toString(), topics: e.detail.subscriptions.map((s) => s.topic) })
})
node.services.pubsub.addEventListener('gossipsub:message', (e) => {
  say({ event: 'raw_gossip', topic: e.detail.msg.topic, from: e.detail.propagationSource.toString() })
})
node.services.pubsub.addEventListener('message', (e) => {
  say({ event: 'gossip', topic: e.detail.topic, bytes: e.detail.data.length })
})
say({ event: 'ready', peer: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })
// Stops by itself: the test kills it earlier.
setTimeout(async () => { await node.stop(); process.exit(0) }, 120000)
