// A minimal Socket.IO 4 node for tests/js/socketio.test.mjs: the Redis adapter (so rooms and broadcasts span every
// node), default transports (polling, then an upgrade to WebSocket), and the stock path /socket.io/. Configured by
// environment: PORT (listen on 127.0.0.1:PORT), REDIS_URL, NODE_ID (a name for this node).
//
// - Every HTTP answer, Engine.IO's own errors included, carries `x-node: NODE_ID`, so a test sees which node the
//   balancer sent each request to.
// - On connect the server emits `welcome` {node, id}; a client emits `join` (room, ack) to join a room.
// - POST /publish?room=R with a JSON body: a backend's broadcast `message` (the body) to room R, from this node,
//   through the Redis adapter to every node. Answers {node, room}.
// - GET /requests?sid=S: {node, sid, statuses}: how many Engine.IO requests naming ?sid=S this node answered, by
//   HTTP status (e.g. {"200": 7} or {"400": 3}), so a test sees every node a session's requests reached.
// - GET /health: {node} once the Redis adapter is connected.
// Run by hand: PORT=3001 REDIS_URL=redis://127.0.0.1:6379 NODE_ID=a node tests/js/sio-server.mjs

import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const PORT = Number(process.env.PORT);
const REDIS_URL = process.env.REDIS_URL;
const NODE = process.env.NODE_ID || `sio-${process.pid}`;
if (!PORT || !REDIS_URL) {
  console.error("sio-server: PORT and REDIS_URL are required");
  process.exit(2);
}

const requestsBySid = new Map(); // Engine.IO sid -> {status: count}

const httpServer = createServer((req, res) => {
  // Engine.IO answers everything under /socket.io/ itself; this handler sees only the other paths.
  const url = new URL(req.url, "http://localhost");
  const json = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (req.method === "GET" && url.pathname === "/health") return json(200, { node: NODE });
  if (req.method === "GET" && url.pathname === "/requests") {
    const sid = url.searchParams.get("sid") || "";
    return json(200, { node: NODE, sid, statuses: requestsBySid.get(sid) || {} });
  }
  if (req.method === "POST" && url.pathname === "/publish") {
    const room = url.searchParams.get("room");
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (d) => (text += d));
    req.on("end", () => {
      let data;
      try {
        data = JSON.parse(text);
      } catch (err) {
        return json(400, { error: `bad JSON: ${err.message}` });
      }
      if (!room) return json(400, { error: "room is required" });
      io.to(room).emit("message", data);
      json(200, { node: NODE, room });
    });
    return;
  }
  json(404, { error: "not found" });
});

const pubClient = createClient({ url: REDIS_URL });
const subClient = pubClient.duplicate();
for (const c of [pubClient, subClient]) c.on("error", (err) => console.error(`sio-server ${NODE}: redis: ${err.message}`));
await Promise.all([pubClient.connect(), subClient.connect()]);

const io = new Server(httpServer, { adapter: createAdapter(pubClient, subClient), serveClient: false });
// Added after Engine.IO has wrapped the server's request listeners, so it runs before Engine.IO handles a request:
// its answers (the 400 "Session ID unknown" too) keep this header.
httpServer.prependListener("request", (req, res) => {
  res.setHeader("x-node", NODE);
  const sid = req.url.startsWith("/socket.io/") && new URL(req.url, "http://localhost").searchParams.get("sid");
  if (sid) {
    res.once("finish", () => {
      const statuses = requestsBySid.get(sid) || {};
      statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
      requestsBySid.set(sid, statuses);
    });
  }
});
io.on("connection", (socket) => {
  socket.emit("welcome", { node: NODE, id: socket.id });
  socket.on("join", async (room, ack) => {
    await socket.join(room);
    if (typeof ack === "function") ack({ node: NODE, room });
  });
});

httpServer.listen(PORT, "127.0.0.1", () => console.log(`sio-server ${NODE} listening on 127.0.0.1:${PORT}`));

let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  io.close();
  await Promise.allSettled([pubClient.quit(), subClient.quit()]);
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
