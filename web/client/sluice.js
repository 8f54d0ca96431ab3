// Sluice — the relay's JavaScript client: publish to and subscribe to topics, and follow the
// relay's stats, over its WebSocket endpoints (docs/protocol.md). An ES module with no
// dependencies where the runtime has a WebSocket (browsers — the relay serves it at
// /sluice.js — and Node 22+); on Node 20 it uses the npm package `ws` (an optional dependency).
// Types: sluice.d.ts.
//
// Frames are the protocol's binary messages: a header (frame index, u64 little-endian;
// timestamp in ns, i64 little-endian; and — this client asks for the 24-byte header — the
// item's flags, u32 little-endian, and 4 reserved bytes) and the payload. Events are its JSON
// text messages, decoded into typed values: gap notices for subscribers, slow_down / resume /
// drop notices for publishers. Nothing is lost silently: a frame the relay skipped for a
// subscriber arrives as a gap with its count and reason, and a close carries the relay's code
// and reason.

/** Bytes of the plain header before a frame's payload (a session's default). */
export const FRAME_HEADER_BYTES = 16;
/** Bytes of the header with flags (a session opened with `?header=24`; this client's). */
export const FLAGGED_FRAME_HEADER_BYTES = 24;
/** Item flag: it depends on an earlier item (a video's delta frame); clear on a keyframe. */
export const ITEM_DELTA = 1;
/** Item flag: nothing depends on it. */
export const ITEM_DISCARDABLE = 2;

/** The relay's WebSocket base URL: the page's own origin in a browser (ws: or wss:). */
export function defaultRelayUrl() {
  if (typeof location !== "undefined" && location.host) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  }
  return "ws://127.0.0.1:7401";
}

/**
 * A frame's bytes: the header, then the payload. `headerBytes` 16 (no flags) or 24 (with
 * `flags`), as the session was opened.
 */
export function encodeFrame(index, timestampNs, payload, { flags = 0, headerBytes = FRAME_HEADER_BYTES } = {}) {
  const body = toBytes(payload);
  const out = new Uint8Array(headerBytes + body.byteLength);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(index), true);
  view.setBigInt64(8, BigInt(timestampNs), true);
  if (headerBytes >= FLAGGED_FRAME_HEADER_BYTES) view.setUint32(16, flags >>> 0, true);
  out.set(body, headerBytes);
  return out;
}

/**
 * A received frame: its index, timestamp, flags (0 from a 16-byte header) and payload (a view
 * of the message, not a copy).
 */
export function decodeFrame(data, headerBytes = FRAME_HEADER_BYTES) {
  const buffer = data instanceof ArrayBuffer ? data : data.buffer;
  const offset = data instanceof ArrayBuffer ? 0 : data.byteOffset;
  const length = data.byteLength;
  if (length < headerBytes) {
    throw new SluiceError(`a frame shorter than its ${headerBytes}-byte header`);
  }
  const view = new DataView(buffer, offset, headerBytes);
  return {
    kind: "frame",
    index: view.getBigUint64(0, true),
    timestampNs: view.getBigInt64(8, true),
    flags: headerBytes >= FLAGGED_FRAME_HEADER_BYTES ? view.getUint32(16, true) : 0,
    payload: new Uint8Array(buffer, offset + headerBytes, length - headerBytes),
  };
}

/** What the relay refused or reported, with its close code when it ended the session. */
export class SluiceError extends Error {
  constructor(message, { code = 0, reason = "" } = {}) {
    super(message);
    this.name = "SluiceError";
    this.code = code;
    this.reason = reason;
  }
}

function toBytes(payload) {
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  if (typeof payload === "string") return new TextEncoder().encode(payload);
  throw new TypeError("a payload is bytes (Uint8Array, ArrayBuffer, a view) or a string");
}

// Subprotocols that carry the token (a browser cannot set headers on a WebSocket).
function protocols(token) {
  return token ? ["sluice", `sluice.bearer.${token}`] : [];
}

function endpoint(base, path, params) {
  const url = new URL(path, (base || defaultRelayUrl()).replace(/^http/, "ws"));
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url.toString();
}

// The WebSocket class: the runtime's, else (Node 20) the npm package `ws`'s, loaded once.
const OPEN = 1; // (WebSocket.OPEN, the same in every implementation)
let webSocketClass = globalThis.WebSocket;
async function webSocket() {
  if (!webSocketClass) {
    try {
      const ws = await import("ws");
      webSocketClass = ws.WebSocket ?? ws.default;
    } catch {
      throw new SluiceError("this runtime has no WebSocket (Node before 22): npm install ws",
        { code: 1006 });
    }
  }
  return webSocketClass;
}

// Opens a WebSocket; resolves once open, rejects with the relay's refusal if it is refused
// (browsers do not show the HTTP answer to a refused upgrade: the close code says 1006).
async function open(url, token) {
  const WebSocketClass = await webSocket();
  return new Promise((resolve, reject) => {
    const ws = new WebSocketClass(url, protocols(token));
    ws.binaryType = "arraybuffer";
    const failed = (e) => {
      reject(new SluiceError(`cannot open ${url.replace(/token=[^&]*/, "token=…")}: ` +
        `refused or unreachable (code ${e.code ?? 1006})`, { code: e.code ?? 1006 }));
    };
    ws.addEventListener("open", () => {
      ws.removeEventListener("close", failed);
      resolve(ws);
    }, { once: true });
    ws.addEventListener("close", failed, { once: true });
    // (The close that follows says it; Node's `ws` throws an error nobody listens for.)
    ws.addEventListener("error", () => {});
  });
}

// A queue an async iterator reads from: values pushed, the reader awaiting the next.
class Inbox {
  constructor() {
    this.items = [];
    this.waiting = null;
    this.ended = false;
  }
  push(v) {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w({ value: v, done: false });
    } else {
      this.items.push(v);
    }
  }
  end() {
    this.ended = true;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w({ value: undefined, done: true });
    }
  }
  next() {
    if (this.items.length) return Promise.resolve({ value: this.items.shift(), done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => { this.waiting = resolve; });
  }
}

// Close codes after which a subscription with `reconnect` subscribes again (the relay stopped or
// the connection was lost); the others are the relay's refusals (docs/protocol.md), final.
const RECONNECT_CODES = new Set([1000, 1001, 1006, 1011, 1012, 1014]);

// Opens a session on the first of `relays` that answers; rejects with the last one's refusal.
async function openFirst(relays, path, params, token) {
  let failure;
  for (const relay of relays) {
    try {
      return await open(endpoint(relay, path, params), token);
    } catch (e) {
      failure = e;
    }
  }
  throw failure;
}

// Opens a session again after `info` ended one: the relay it was on (`url`), then the others of
// `again.relays` in turn, one round between backoffs (100 ms doubling to 2 s), for up to
// again.reconnectForMs, unless `closing()`. {ws}: the new socket; or {failure}: why not.
async function reopen(again, url, info, closing) {
  const { relays, path, params, token, reconnectForMs } = again;
  const giveUp = Date.now() + reconnectForMs;
  let backoff = 100;
  let at = Math.max(0, relays.findIndex((r) => url.startsWith(endpoint(r, "/"))));
  let last = info;
  for (;;) {
    for (let i = 0; i < relays.length && !closing(); i++) {
      try {
        return { ws: await open(endpoint(relays[(at + i) % relays.length], path, params), token) };
      } catch (e) {
        last = { code: e.code, reason: e.message };
      }
    }
    if (closing() || Date.now() + backoff > giveUp) {
      return {
        failure: {
          code: last.code,
          reason: `no relay answered within reconnectForMs (${reconnectForMs} ms): ${last.reason}`,
        },
      };
    }
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 2000);
    at = 0;
  }
}

// What a subscription read only through its events keeps for a `for await` loop begun later.
const INBOX_UNREAD = 64;

/**
 * A subscription: `for await (const m of sub)` yields frames and gap notices in the order the
 * relay sent them; or listen for "frame", "gap", "error", "reconnected" and "close" events. Ends
 * when the relay closes the session (the "close" event and `closed` carry its code and reason) —
 * or, with `reconnect`, once no relay of its list answered for `reconnectForMs`.
 */
export class Subscription extends EventTarget {
  #again;
  #closing = false;
  #window;
  #iterating = false;
  #acks = null; // the current socket's window: {ws, processed, acked}
  #from = new WeakMap(); // a frame -> the window of the socket it came on

  constructor(ws, topic, again = null, window = 0) {
    super();
    this.#window = window;
    this.topic = topic;
    this.ws = ws;
    this.url = ws.url;
    this.received = 0;
    this.lost = 0;
    this.reconnects = 0;
    this.inbox = new Inbox();
    this.#again = again;
    this.closed = new Promise((resolve) => { this.#attach(ws, resolve); });
  }

  #attach(ws, resolve) {
    const acks = { ws, processed: 0, acked: 0 };
    this.#acks = acks;
    ws.addEventListener("message", (e) => this.#message(e.data, acks));
    ws.addEventListener("close", async (e) => {
      let info = { code: e.code, reason: e.reason };
      if (this.#again && !this.#closing && RECONNECT_CODES.has(e.code)) {
        const { ws: next, failure } = await this.#reconnect(info);
        if (next) {
          this.ws = next;
          this.url = next.url;
          this.reconnects += 1;
          // What was published while it was away is unknown: said, not hidden.
          this.#push({ kind: "gap", count: 0, reason: "reconnected" });
          this.dispatchEvent(new CustomEvent("reconnected", { detail: { url: next.url } }));
          this.#attach(next, resolve);
          return;
        }
        info = failure;
      }
      this.inbox.end();
      this.dispatchEvent(new CustomEvent("close", { detail: info }));
      resolve(info);
    }, { once: true });
  }

  async #reconnect(info) {
    return reopen(this.#again, this.url, info, () => this.#closing);
  }

  #push(m) {
    this.inbox.push(m);
    // Read through its events only (no loop has begun): the inbox keeps the last INBOX_UNREAD
    // for a loop that may begin later, not every frame the topic sends; what it let go is one
    // gap notice at its head (reason "unread"), so that such a loop still accounts for it.
    if (!this.#iterating && this.inbox.items.length > INBOX_UNREAD) {
      let count = 0;
      while (this.inbox.items.length >= INBOX_UNREAD) {
        const old = this.inbox.items.shift();
        count += old.kind === "frame" ? 1 : old.kind === "gap" ? old.count : 0;
      }
      this.inbox.items.unshift({ kind: "gap", count, reason: "unread" });
    }
    this.dispatchEvent(new CustomEvent(m.kind, { detail: m }));
  }

  // A frame of `acks`'s socket was processed: taken by the iterator, or (a subscription read
  // through its events) dispatched. Acknowledged every half window, so that the relay, which
  // keeps at most `window` frames unacknowledged, never waits on an acknowledgement not sent.
  #processed(acks) {
    if (!this.#window || acks !== this.#acks) return; // (a frame of a socket gone: no one to tell)
    acks.processed += 1;
    if (acks.processed - acks.acked < Math.ceil(this.#window / 2)) return;
    acks.acked = acks.processed;
    if (acks.ws.readyState === OPEN) acks.ws.send(JSON.stringify({ ack: acks.acked }));
  }

  #message(data, acks) {
    let m;
    if (typeof data === "string") {
      const event = JSON.parse(data);
      if (event.gap !== undefined) {
        m = { kind: "gap", count: event.gap, reason: event.reason };
        this.lost += event.gap;
      } else if (event.error !== undefined) {
        m = { kind: "error", message: event.error };
      } else {
        m = { kind: "event", event };
      }
    } else {
      m = decodeFrame(data, FLAGGED_FRAME_HEADER_BYTES);
      this.received += 1;
      if (this.#window) this.#from.set(m, acks);
    }
    this.#push(m);
    if (this.#window && !this.#iterating && m.kind === "frame") this.#processed(acks);
  }

  [Symbol.asyncIterator]() {
    this.#iterating = true;
    // (what was dispatched before the loop began is acknowledged already; what waits in the
    // inbox is acknowledged as the loop takes it)
    let previous = null;
    return {
      next: async () => {
        if (previous) this.#processed(previous);
        previous = null;
        const r = await this.inbox.next();
        if (!r.done) previous = this.#from.get(r.value) ?? null;
        return r;
      },
    };
  }

  /** Leaves the topic. */
  close() {
    this.#closing = true;
    this.ws.close(1000, "done");
    return this.closed;
  }
}

/**
 * Subscribes to `topic`. Options: `url` (the relay, default: this page's origin) or `urls`
 * (several relays serving the topic — a cluster topic, docs/cluster.md — tried in turn), `name`
 * (in the relay's stats), `depth` (real-time topics: frames kept for this subscriber), `token`,
 * `reconnect` (subscribe again when the relay stops or the connection is lost: the relay it was
 * on, then the others of `urls` in turn, for up to `reconnectForMs`, default 30 s; what was
 * published meanwhile is announced as a gap `{count: 0, reason: "reconnected"}`: unknown),
 * `window` (default 16; 0: none): at most this many frames are on their way to the page and
 * not yet processed — taken by `for await`, or, for a subscription read through its events,
 * dispatched. What the page has not taken waits in the relay, where a real-time topic skips it
 * (a gap) and a lossless one holds its producer back: a busy page is shown frames at most
 * `window` (plus the topic's depth) behind, whatever the network buffers hold.
 */
export async function subscribe(topic, options = {}) {
  const {
    url, urls, name, depth, token, reconnect = false, reconnectForMs = 30000, window = 16,
  } = options;
  const relays = urls && urls.length ? urls : [url];
  const path = `/v1/ws/subscribe/${encodeURIComponent(topic)}`;
  const params = { name, depth, header: FLAGGED_FRAME_HEADER_BYTES, window: window || undefined };
  const ws = await openFirst(relays, path, params, token);
  const again = reconnect ? { relays, path, params, token, reconnectForMs } : null;
  return new Subscription(ws, topic, again, window);
}

// Close codes after which a publisher with `reconnect` opens a new session (the relay stopped or
// restarted, the connection was lost); the others are final (a refusal, max_wait: 1013).
const PUBLISH_RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1014]);

/**
 * A publisher: `await pub.send(payload)` sends one frame, and waits first while the relay holds
 * the producer back (it stops reading a full lossless topic: the socket's unsent bytes grow
 * past `highWaterBytes`). Events: "slow_down" and "resume" (the topic's, or its stage's),
 * "dropped" (a stage will not process a frame), "error", "reconnected", "close".
 *
 * With `reconnect` (publish()'s option) the relay acknowledges frames and the publisher names
 * itself (a producer id): it keeps the frames not yet acknowledged (at most `highWaterBytes`;
 * send() waits beyond), and when the connection is lost or the relay restarts it opens a new
 * session (the relays of `urls` in turn, backoff 100 ms doubling to 2 s, for up to
 * `reconnectForMs`) and sends them again, in order; the relay puts a frame it already has in
 * once. `flush()` waits until every frame is acknowledged; `close()` flushes first.
 */
export class Publisher extends EventTarget {
  #again;
  #closing = false;
  #ended = false;
  #unacked = []; // {index, frame, sent} not yet acknowledged (reconnecting publishers)
  #unackedBytes = 0;
  #waiters = [];

  constructor(ws, topic, highWaterBytes, again = null) {
    super();
    this.topic = topic;
    this.next = 0n;
    this.sent = 0;
    this.acked = 0;
    this.resent = 0;
    this.reconnects = 0;
    this.slowed = false;
    this.highWaterBytes = highWaterBytes;
    this.#again = again;
    this.closed = new Promise((resolve) => { this.#attach(ws, resolve); });
  }

  /** Frames sent and not yet acknowledged (reconnecting publishers; else 0). */
  get unacknowledged() {
    return this.#unacked.length;
  }

  #attach(ws, resolve) {
    this.ws = ws;
    this.url = ws.url;
    ws.addEventListener("message", (e) => {
      if (typeof e.data !== "string") return;
      const event = JSON.parse(e.data);
      if (event.ack !== undefined) {
        this.#prune(BigInt(event.ack));
        return;
      }
      let kind = "event";
      if (event.warning === "slow_down") {
        kind = "slow_down";
        this.slowed = true;
      } else if (event.resume) {
        kind = "resume";
        this.slowed = false;
      } else if (event.dropped) {
        kind = "dropped";
      } else if (event.error !== undefined) {
        kind = "error";
      }
      this.dispatchEvent(new CustomEvent(kind, { detail: event }));
    });
    ws.addEventListener("close", async (e) => {
      let info = { code: e.code, reason: e.reason };
      if (this.#again && !this.#closing && PUBLISH_RECONNECT_CODES.has(e.code)) {
        const { ws: next, failure } = await reopen(this.#again, this.url, info,
          () => this.#closing);
        if (next) {
          this.reconnects += 1;
          this.slowed = false;
          this.#attach(next, resolve);
          for (const f of this.#unacked) { // (in order: the relay skips what it has)
            next.send(f.frame);
            f.sent = true;
            this.resent += 1;
          }
          this.dispatchEvent(new CustomEvent("reconnected", { detail: { url: next.url } }));
          this.#wake();
          return;
        }
        info = failure;
      }
      this.#ended = true;
      this.#wake();
      this.dispatchEvent(new CustomEvent("close", { detail: info }));
      resolve(info);
    }, { once: true });
  }

  #prune(through) {
    while (this.#unacked.length && this.#unacked[0].index <= through) {
      this.#unackedBytes -= this.#unacked.shift().frame.byteLength;
      this.acked += 1;
    }
    this.#wake();
  }

  // Resolves at the next acknowledgement, reconnection or end.
  #changed() {
    return new Promise((r) => this.#waiters.push(r));
  }

  #wake() {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  async #failure() {
    const info = await this.closed;
    return new SluiceError(`the relay closed the publisher: ${info.code} ${info.reason}`, info);
  }

  /**
   * Sends one frame. `index` defaults to the previous one plus one; `timestampNs` to 0 (the
   * relay stamps its arrival); `flags` to 0 (ITEM_DELTA on a video's delta frames, so that a
   * subscriber that lost frames resumes at a keyframe). Resolves once the frame is handed to
   * the socket; rejects if the session has ended (and, reconnecting, did not come back).
   */
  async send(payload, { index, timestampNs = 0, flags = 0 } = {}) {
    const i = index === undefined ? this.next : BigInt(index);
    const frame = encodeFrame(i, timestampNs, payload,
      { flags, headerBytes: FLAGGED_FRAME_HEADER_BYTES });
    let entry = null;
    if (this.#again) {
      await this.#until(() => !this.#unacked.length ||
        this.#unackedBytes + frame.byteLength <= this.highWaterBytes);
      entry = { index: i, frame, sent: false };
      this.#unacked.push(entry);
      this.#unackedBytes += frame.byteLength;
    }
    for (;;) {
      while (this.ws.readyState === OPEN && this.ws.bufferedAmount > this.highWaterBytes) {
        await new Promise((r) => setTimeout(r, 5));
      }
      if (entry?.sent) break; // (sent again with the others after a reconnection)
      if (this.ws.readyState === OPEN) {
        this.ws.send(frame);
        if (entry) entry.sent = true;
        break;
      }
      if (!this.#again || this.#ended) throw await this.#failure();
      await this.#changed(); // (closing: reconnected, or ended)
    }
    this.next = i + 1n;
    this.sent += 1;
  }

  /** Reconnecting publishers: resolves once every frame sent is acknowledged. */
  async flush() {
    await this.#until(() => !this.#unacked.length);
  }

  // Waits through acknowledgements and reconnections until `enough()`; rejects once ended.
  async #until(enough) {
    while (!enough()) {
      if (this.#ended) throw await this.#failure();
      await this.#changed();
    }
  }

  /** Ends the session once what was sent has left (reconnecting: once it is acknowledged). */
  async close() {
    try {
      await this.flush();
    } finally {
      this.#closing = true;
      this.ws.close(1000, "done");
    }
    return this.closed;
  }
}

/**
 * Opens a publisher on `topic`. Options: `url` (or `urls`: several relays serving a cluster
 * topic, tried in turn), `token`, `highWaterBytes` (unsent — and, reconnecting, unacknowledged —
 * bytes above which send() waits; default 1 MiB), `reconnect` (ride out a lost connection or a
 * relay restart: see Publisher), `reconnectForMs` (default 30 s), `producer` (its id, with
 * `reconnect`; default a random one).
 */
export async function publish(topic, options = {}) {
  const {
    url, urls, token, highWaterBytes = 1 << 20, reconnect = false, reconnectForMs = 30000,
    producer,
  } = options;
  const relays = urls && urls.length ? urls : [url];
  const path = `/v1/ws/publish/${encodeURIComponent(topic)}`;
  const params = { header: FLAGGED_FRAME_HEADER_BYTES };
  if (reconnect) {
    params.producer = producer ?? randomId();
    params.acks = 1;
  }
  const ws = await openFirst(relays, path, params, token);
  const again = reconnect ? { relays, path, params, token, reconnectForMs } : null;
  return new Publisher(ws, topic, highWaterBytes, again);
}

// 32 random hex digits (a producer's id).
function randomId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Follows the relay's stats (/v1/ws/stats): `onStats(snapshot)` every `periodMs`, and
 * `onState("up" | "down", detail)` as the connection comes and goes. Reconnects by itself
 * (backoff 250 ms doubling to 5 s) until `stop()` is called.
 */
export function watchStats(onStats, options = {}) {
  const { url, token, periodMs = 1000, onState = () => {} } = options;
  let ws = null;
  let stopped = false;
  let backoff = 250;
  let timer = null;
  const connect = () => {
    if (stopped) return;
    webSocket().then((WebSocketClass) => {
      if (!stopped) start(WebSocketClass);
    }, (e) => onState("down", { code: 1006, reason: e.message }));
  };
  const start = (WebSocketClass) => {
    ws = new WebSocketClass(endpoint(url, "/v1/ws/stats", { period_ms: periodMs }),
      protocols(token));
    ws.addEventListener("error", () => {}); // (the close that follows says it)
    ws.addEventListener("open", () => {
      backoff = 250;
      onState("up", {});
    });
    ws.addEventListener("message", (e) => {
      if (typeof e.data === "string") onStats(JSON.parse(e.data));
    });
    ws.addEventListener("close", (e) => {
      onState("down", { code: e.code, reason: e.reason, retryMs: backoff });
      if (stopped) return;
      timer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 5000);
    });
  };
  connect();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (ws) ws.close(1000, "done");
    },
  };
}

/**
 * Plays a topic's video over WebRTC (WHEP, docs/media.md): offers to receive video, POSTs the
 * offer to /v1/whep/{topic} once ICE has gathered, and applies the relay's answer. Resolves
 * with `{ pc, stream, location, close() }` once answered: `stream` (a MediaStream) goes in a
 * <video>'s srcObject; `close()` ends the viewer (DELETE on `location`) and the connection.
 * Rejects with a SluiceError carrying the relay's HTTP status and its message (a topic whose
 * video is not VP8 or H.264: 415; no keyframe in time: 504; too many viewers: 503).
 * `url`: the relay's HTTP(S) base (default: the page's origin); `iceServers`: for
 * RTCPeerConnection (none needed on one network).
 */
export async function watchVideo(topic, options = {}) {
  const { url, token, name, iceServers = [], gatherMs = 5000 } = options;
  const base = httpBase(url);
  const pc = new RTCPeerConnection({ iceServers });
  pc.addTransceiver("video", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (e) => stream.addTrack(e.track));
  try {
    await pc.setLocalDescription(await pc.createOffer());
    // Not trickled: the offer goes with its candidates (host candidates gather in milliseconds).
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, gatherMs);
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    }
    const query = name ? `?name=${encodeURIComponent(name)}` : "";
    const headers = { "Content-Type": "application/sdp" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(`${base}/v1/whep/${encodeURIComponent(topic)}${query}`, {
      method: "POST", headers, body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) {
      throw new SluiceError(`WHEP ${res.status}: ${body.trim()}`, { code: res.status, reason: body.trim() });
    }
    const location = new URL(res.headers.get("Location"), base + "/").href;
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    return {
      pc,
      stream,
      location,
      async close() {
        pc.close();
        const del = { method: "DELETE" };
        if (token) del.headers = { Authorization: `Bearer ${token}` };
        await fetch(location, del).catch(() => {});
      },
    };
  } catch (e) {
    pc.close();
    throw e;
  }
}

// The relay's HTTP base for `url` (ws:// -> http://, wss:// -> https://; none: the page's).
function httpBase(url) {
  const u = url || defaultRelayUrl();
  return u.replace(/^ws(s?):\/\//, "http$1://").replace(/\/$/, "");
}
