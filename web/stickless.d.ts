// Type declarations for web/stickless.js, written by hand against the code in web/client/ and the frames in
// docs/PROTOCOL.md; tests/js/types.test.mjs checks them with `tsc --noEmit` on tests/js/types/usage.ts.

/** A transport the client can attach with, in the order auto mode tries them. */
export type TransportName = "websocket" | "sse" | "long-polling";

/** What the client attaches with: one transport, or "auto" (negotiate, fall back, remember what worked). */
export type TransportMode = TransportName | "auto";

/** The client's connection state, as reported by the `state` event and the `state` property. */
export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** The last message a client has seen on a channel. */
export interface Cursor {
  epoch: string;
  offset: number;
}

/** Error codes the server sends (docs/PROTOCOL.md, "Errors"). */
export type ServerErrorCode =
  | "malformed_json"
  | "invalid_frame"
  | "unknown_type"
  | "invalid_channel"
  | "invalid_position"
  | "too_many_frames"
  | "too_many_subscriptions"
  | "binary_unsupported"
  | "unauthorized"
  /** The connection token does not verify, or a refresh for another user. */
  | "token_invalid"
  /** The token passed its `exp`: the client reconnects with one from getToken(). */
  | "token_expired"
  | "forbidden"
  | "session_unknown"
  | "transport_disabled"
  | "payload_too_large"
  /** Over a rate limit; the client waits (`Retry-After`, or its own backoff) and tries again. */
  | "rate_limited"
  | "internal"
  | "over_capacity"
  | "draining"
  /** The application's hook failed or timed out: nothing was done. */
  | "hook_unavailable"
  | "store_unavailable";

/** Error codes the client makes itself: transport failures, switches, close(). */
export type ClientErrorCode =
  | "closed"
  | "aborted"
  | "timeout"
  | "silence"
  | "blocked"
  | "dropped"
  | "unsupported"
  | "transport_error"
  | "sse_error"
  | "poll_failed"
  | "probe_failed"
  | "connect_failed"
  | "switch_failed"
  /** getToken() threw or gave no token. */
  | "token_unavailable"
  | `http_${number}`;

/** Any error code; open-ended, as a newer server may send codes this client does not know. */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

// ---- frames (docs/PROTOCOL.md, "Frames") ----------------------------------------------------------------------

export interface SubscribeFrame {
  type: "subscribe";
  id: string;
  channel: string;
  since?: Cursor;
}
export interface UnsubscribeFrame {
  type: "unsubscribe";
  id: string;
  channel: string;
}
export interface PublishFrame {
  type: "publish";
  id: string;
  channel: string;
  data: unknown;
}
export interface PresenceFrame {
  type: "presence";
  id: string;
  channel: string;
}
export interface PingFrame {
  type: "ping";
  id: string;
}
/** A new connection token for the session's own user (`sub`); the client sends it before `exp`. */
export interface RefreshFrame {
  type: "refresh";
  id: string;
  token: string;
}
/** Client to server. */
export type UpstreamFrame = SubscribeFrame | UnsubscribeFrame | PublishFrame | PresenceFrame | PingFrame | RefreshFrame;

export interface WelcomeFrame {
  type: "welcome";
  session: string;
  pid: string;
  node: string;
  transport: TransportName;
  heartbeat_ms: number;
}
/** Who published a message from a client (messages from the backend API have no sender). */
export interface Sender {
  /** The user (the token's `sub`); null for an anonymous session. */
  sub: string | null;
  /** The publishing session's public id, as presence shows it. */
  pid: string;
}
export interface MessageFrame {
  type: "message";
  channel: string;
  epoch: string;
  offset: number;
  /** Milliseconds since 1970 when the message was published. */
  ts: number;
  data: unknown;
  /** Set when a client published it. */
  from?: Sender;
}
export interface GapFrame {
  type: "gap";
  channel: string;
  epoch: string;
  offset: number;
  reason: "trimmed" | "epoch";
  previous: Cursor;
}
export interface AckFrame {
  type: "ack";
  id: string;
  result: unknown;
}
export interface ErrorFrame {
  type: "error";
  id: string | null;
  code: ErrorCode;
  message: string;
}
export interface HeartbeatFrame {
  type: "heartbeat";
}
/** Server to client. */
/** The node is draining: the connection ends; the client reconnects after `after_ms`. */
export interface ReconnectFrame {
  type: "reconnect";
  after_ms: number;
}

export type DownstreamFrame = WelcomeFrame | MessageFrame | GapFrame | AckFrame | ErrorFrame | HeartbeatFrame | ReconnectFrame;

// ---- ack results -------------------------------------------------------------------------------------------------

/** Where a message was stored (publish), or the cursor delivery starts after (subscribe). */
export interface ChannelCursor extends Cursor {
  channel: string;
}
export interface UnsubscribeResult {
  channel: string;
}
export interface PresenceResult {
  channel: string;
  pids: string[];
}
export interface RefreshResult {
  /** Until when the new token holds (seconds since 1970). */
  exp: number;
}

/** The server's limits, from GET /v1/negotiate (only `max_frames_per_send` is known before it answers). */
export interface Limits {
  max_frames_per_send: number;
  max_message_bytes?: number;
  max_subscriptions?: number;
  max_batch?: number;
}

// ---- events ----------------------------------------------------------------------------------------------------

export interface StateEvent {
  state: ConnectionState;
  transport: TransportName | null;
  /** Why: which transport connected or failed, and the notes of auto mode's choice. */
  reason: string;
  reconnects: number;
}

/** A new message on a subscribed channel, delivered once (anything at or below the channel's cursor is dropped). */
export interface ChannelMessageEvent extends Omit<MessageFrame, "type"> {
  /** The node that served it, when known. */
  node: string | null;
  transport: TransportName;
}

/** Messages were lost (history no longer reached back): the cursor moved to (epoch, offset). */
export interface GapEvent extends GapFrame {
  transport: TransportName;
}

/**
 * A connection's welcome. Long-polling attaches to an existing session without a welcome frame; the client then
 * makes one up from what it knows, so `pid` and `node` may be missing there.
 */
export interface WelcomeEvent extends Omit<WelcomeFrame, "pid" | "node"> {
  pid?: string | null;
  node?: string | null;
}

/** One long-poll answer (long-polling only). */
export interface PollEvent {
  node: string | undefined;
  frames: DownstreamFrame[];
}

/**
 * The session took a connection token: "attach" when a connect or reconnect presented it (the first connect,
 * or one after `token_expired`), "refresh" when it was handed over in place on the open connection.
 */
export interface TokenEvent {
  via: "attach" | "refresh";
  /** The token's `exp` (seconds since 1970), or null when the client could not read one. */
  exp: number | null;
  transport: TransportName | null;
}

export interface StickEvents {
  state: StateEvent;
  message: ChannelMessageEvent;
  gap: GapEvent;
  welcome: WelcomeEvent;
  poll: PollEvent;
  token: TokenEvent;
  /**
   * A failed connect round, switch, re-subscribe or refresh (a StickError; an attach the server refused carries
   * its code: `token_invalid`, `token_expired`, `forbidden`, `rate_limited`), or an `error` frame as the server
   * sent it.
   */
  error: StickError | ErrorFrame;
}

// ---- what the client needs from its runtime (browsers have all three; in Node pass `ws` and `eventsource`) ----

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface EventSourceLike {
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface ResponseLike {
  readonly ok: boolean;
  readonly status: number;
  /** Read for `Retry-After` when present. */
  readonly headers?: { get(name: string): string | null };
  json(): Promise<unknown>;
  arrayBuffer(): Promise<unknown>;
}
export interface FetchInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  cache?: "no-store";
  signal?: AbortSignal | null;
}
export type FetchLike = (url: string, init: FetchInit) => Promise<ResponseLike>;

/** Where the client remembers which transport worked (localStorage in a browser). */
export interface TransportMemory {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface StickOptions {
  /** The gateway's base URL; default: the page's origin (required outside a browser page). */
  url?: string;
  /** Default "auto". */
  transport?: TransportMode;
  WebSocket?: WebSocketConstructor;
  EventSource?: EventSourceConstructor;
  fetch?: FetchLike;
  /** How long an attach may take until its welcome; default 4000. */
  connectTimeoutMs?: number;
  /** Default: localStorage when usable; null: remember nothing. */
  storage?: TransportMemory | null;
  /**
   * A connection token (JWT) for the first connect. Without getToken() it cannot be replaced: at its `exp` the
   * session stops, and the client keeps retrying (backing off) with an `error` event each time.
   */
  token?: string;
  /**
   * Hands out connection tokens: for the first connect (unless `token` is given), for a refresh in place before
   * the current one's `exp` (at exp - max(5 s, 10% of its remaining lifetime)), after the server said
   * `token_expired`, and once more after an attach refused with `token_invalid` or `forbidden`. Without `token`
   * or getToken the client connects anonymously.
   */
  getToken?: () => string | Promise<string>;
}

// ---- the API -------------------------------------------------------------------------------------------------------

/** An error carrying the protocol's error `code` (e.g. "invalid_channel", "session_unknown"). */
export class StickError extends Error {
  constructor(code: ErrorCode, message?: string, extra?: { status?: number; frame?: ErrorFrame; retryAfterMs?: number });
  readonly name: "StickError";
  code: ErrorCode;
  /** The HTTP status, when the error came from an HTTP answer. */
  status?: number;
  /** The answer's `Retry-After`, in ms (`rate_limited`). */
  retryAfterMs?: number;
  /** The `error` frame, when the server refused an upstream frame. */
  frame?: ErrorFrame;
}

/**
 * Parses a protocol position string into [channel, cursor] pairs; malformed parts are skipped. An entry written
 * as a key (`~` and 16 hex digits: a name over 17 characters) is named by the channel in `channels` with that
 * key, and keeps its key when none has it.
 */
export function parsePosition(text: string | null | undefined, channels?: Iterable<string>): Array<[string, Cursor]>;

export class Stickless {
  constructor(options?: StickOptions);

  readonly url: string;
  connectTimeoutMs: number;
  /** The transport of the current (or last) connection. */
  readonly transport: TransportName | null;
  readonly state: ConnectionState;
  readonly sessionId: string | null;
  /** The session's public id, as presence shows it. */
  readonly pid: string | null;
  /** The node behind the latest welcome. */
  readonly node: string | null;
  /** Reconnects after a lost connection (a transport switch is not one, nor a token refreshed in place). */
  readonly reconnects: number;
  /** Tokens handed over in place (see the `token` event). */
  readonly refreshes: number;
  /** Why the current transport was chosen, or why connecting failed. */
  readonly why: string;
  readonly heartbeatMs: number;
  readonly pollTimeoutMs: number;
  readonly limits: Limits;
  /** The protocol position: `channel@epoch@offset` (a long name as its key) for every subscribed channel with a known cursor. */
  readonly position: string;

  on<E extends keyof StickEvents>(event: E, listener: (payload: StickEvents[E]) => void): this;
  off<E extends keyof StickEvents>(event: E, listener: (payload: StickEvents[E]) => void): this;

  /** The cursor of one channel, or null. */
  cursor(channel: string): Cursor | null;
  /** Resolves once a transport is connected (welcome received). Rejects only if close() is called first. */
  connect(): Promise<this>;
  /** Resolves with the cursor delivery starts after; resumes from the channel's cursor when the client has one. */
  subscribe(channel: string): Promise<ChannelCursor>;
  unsubscribe(channel: string): Promise<UnsubscribeResult>;
  /** Resolves once stored, with where. `data` is any JSON value. */
  publish(channel: string, data: unknown): Promise<ChannelCursor>;
  presence(channel: string): Promise<PresenceResult>;
  ping(): Promise<Record<string, never>>;
  /**
   * Switches transport live ("auto" only changes what the next reconnect tries). Resolves true once switched,
   * false if a later setTransport or close() superseded it; rejects with a StickError when the new transport
   * failed, in which case the old one is kept.
   */
  setTransport(name: TransportMode): Promise<boolean>;
  /** Simulates a restrictive network: a blocked transport fails to attach (default: block). */
  block(name: TransportName, blocked?: boolean): void;
  /** Drops the current connection like a network failure; the client reconnects and resumes. */
  drop(): void;
  close(): void;
}

export default Stickless;
