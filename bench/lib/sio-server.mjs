// The Socket.IO 4 side of the comparison: one node, or one of several on @socket.io/redis-adapter.
//
// A client joins the room named by its `channels` query parameter on connection (as stickless subscribes at
// attach). Publishing is the same as stickless' backend API: `POST /publish {"channel","data"}` calls
// `io.to(channel).emit("message", data)` and answers 200 once emitted (with the adapter: once handed to Redis).
// This is the fairest match: an HTTP publish from a backend, one emit per publish, fanned out by the server (a
// client-sent event would add a client round trip that stickless' HTTP publish does not have).
//
// Usage: node sio-server.mjs PORT [REDIS_URL]    (run with --expose-gc so GET /gc can settle memory readings)

import http from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.argv[2]);
const redisUrl = process.argv[3];

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString());
      } catch {
        res.writeHead(400).end('malformed json');
        return;
      }
      io.to(body.channel).emit('message', body.data);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
    return;
  }
  if (req.url === '/gc') {
    if (global.gc) global.gc();
    res.writeHead(200).end(global.gc ? 'gc' : 'no gc');
    return;
  }
  if (req.url === '/health') {
    res.writeHead(200).end(io.adapterReady ? 'ready' : 'starting');
    return;
  }
  if (!req.url.startsWith('/socket.io/')) res.writeHead(404).end();
});

// Node closes idle keep-alive connections after 5 s by default, which races with a client reusing one (a publish
// fails with ECONNRESET now and then). hyper, under stickless and raw axum, has no such timeout: keep them open.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

// Defaults otherwise (permessage-deflate off, as in stickless); WebSocket only, like the bench clients.
const io = new Server(server, { transports: ['websocket'], serveClient: false });

io.on('connection', (socket) => {
  const channels = socket.handshake.query.channels;
  if (typeof channels === 'string') for (const c of channels.split(',')) if (c) socket.join(c);
});

if (redisUrl) {
  const { createClient } = await import('redis');
  const { createAdapter } = await import('@socket.io/redis-adapter');
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on('error', (e) => console.error('redis pub', e.message));
  sub.on('error', (e) => console.error('redis sub', e.message));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}
io.adapterReady = true;

server.listen(port, '127.0.0.1', () => console.error(`socket.io listening on ${port}${redisUrl ? ' (redis adapter)' : ''}`));
