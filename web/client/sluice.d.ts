// Types of the relay's JavaScript client (sluice.js). See docs/protocol.md for the protocol.

/** Bytes of the plain header before a frame's payload (a session's default). */
export const FRAME_HEADER_BYTES: 16;
/** Bytes of the header with flags (`?header=24`), which this client's sessions use. */
export const FLAGGED_FRAME_HEADER_BYTES: 24;
/** Item flag: it depends on an earlier item (a video's delta frame); clear on a keyframe. */
export const ITEM_DELTA: 1;
/** Item flag: nothing depends on it. */
export const ITEM_DISCARDABLE: 2;

export type Payload = Uint8Array | ArrayBuffer | ArrayBufferView | string;

/**
 * A frame as received: the producer's index, timestamp (ns) and flags (ITEM_DELTA,
 * ITEM_DISCARDABLE; 0 from a 16-byte header), and the payload (a view).
 */
export interface Frame {
  kind: "frame";
  index: bigint;
  timestampNs: bigint;
  flags: number;
  payload: Uint8Array;
}
/** Frames the relay skipped for this subscriber before the next one (a real-time topic). */
export interface Gap {
  kind: "gap";
  count: number;
  reason: string; // e.g. "slow_consumer"; "reconnected" (count 0) after a reconnect
}
/** Something the relay reports about a message of ours; the session goes on. */
export interface ErrorNotice {
  kind: "error";
  message: string;
}
/** Any other JSON event, as sent. */
export interface OtherEvent {
  kind: "event";
  event: Record<string, unknown>;
}
export type Received = Frame | Gap | ErrorNotice | OtherEvent;

/** How a session ended: the WebSocket close code and the relay's reason (docs/protocol.md). */
export interface CloseInfo {
  code: number;
  reason: string;
}

export class SluiceError extends Error {
  code: number;
  reason: string;
}

export function defaultRelayUrl(): string;
export function encodeFrame(index: number | bigint, timestampNs: number | bigint,
                            payload: Payload,
                            options?: { flags?: number; headerBytes?: 16 | 24 }): Uint8Array;
export function decodeFrame(data: ArrayBuffer | Uint8Array, headerBytes?: 16 | 24): Frame;

export interface ConnectOptions {
  /** The relay: ws://host:port (default: this page's origin). */
  url?: string;
  /** A principal's token (sent as the subprotocol sluice.bearer.<token>). */
  token?: string;
}

export class Subscription extends EventTarget implements AsyncIterable<Received> {
  readonly topic: string;
  /** The relay it is subscribed at (another of `urls` after a reconnect). */
  readonly url: string;
  /** Frames received, and frames announced lost by gap notices. */
  readonly received: number;
  readonly lost: number;
  /** Times it subscribed again (`reconnect`); each is announced as a gap `reconnected`. */
  readonly reconnects: number;
  readonly closed: Promise<CloseInfo>;
  [Symbol.asyncIterator](): AsyncIterator<Received>;
  close(): Promise<CloseInfo>;
}

export interface SubscribeOptions extends ConnectOptions {
  /** Several relays that serve the topic (a cluster topic): tried in turn; replaces `url`. */
  urls?: string[];
  name?: string;
  depth?: number;
  /**
   * Subscribe again when the relay stops or the connection is lost (close codes 1000, 1001,
   * 1006, 1011, 1012, 1014): the relay it was on, then the others of `urls`, with backoff
   * (100 ms doubling to 2 s) for up to `reconnectForMs` (default 30000). Each success is
   * announced as a gap `{count: 0, reason: "reconnected"}` (what was missed is unknown) and a
   * "reconnected" event; a refusal (1008, 4008, ...) ends the subscription as without it.
   */
  reconnect?: boolean;
  reconnectForMs?: number;
  /**
   * At most this many frames on their way to the page and not yet processed (taken by
   * `for await`, or dispatched to "frame" listeners); the rest wait in the relay (a real-time
   * topic skips them: a gap; a lossless one holds its producer back). Default 16; 0: none
   * (the network's buffers then decide how far behind a busy page falls).
   */
  window?: number;
}

export function subscribe(topic: string, options?: SubscribeOptions): Promise<Subscription>;

export class Publisher extends EventTarget {
  readonly topic: string;
  readonly sent: number;
  /** Reconnecting publishers: frames the relay acknowledged, sent again, and reconnections. */
  readonly acked: number;
  readonly resent: number;
  readonly reconnects: number;
  /** Frames sent and not yet acknowledged (reconnecting publishers; else 0). */
  readonly unacknowledged: number;
  /** The relay has told this producer to slow down, and not yet to resume. */
  readonly slowed: boolean;
  readonly closed: Promise<CloseInfo>;
  send(payload: Payload,
       options?: { index?: number | bigint; timestampNs?: number | bigint; flags?: number }):
    Promise<void>;
  /** Reconnecting publishers: resolves once every frame sent is acknowledged. */
  flush(): Promise<void>;
  close(): Promise<CloseInfo>;
}

export interface PublishOptions extends ConnectOptions {
  /** Several relays serving a cluster topic, tried in turn (instead of `url`). */
  urls?: string[];
  /** Unsent (and, reconnecting, unacknowledged) bytes above which send() waits; 1 MiB. */
  highWaterBytes?: number;
  /**
   * Ride out a lost connection or a relay restart: frames the relay has not acknowledged are
   * kept and sent again on a new session, each put in once (the publisher names itself).
   */
  reconnect?: boolean;
  /** How long reconnecting may take before send() rejects; 30000. */
  reconnectForMs?: number;
  /** The producer's id with `reconnect` (default: a random one). */
  producer?: string;
}

export function publish(topic: string, options?: PublishOptions): Promise<Publisher>;

/** One snapshot of /v1/ws/stats (the JSON of /v1/stats, with its period and time). */
export interface StatsSnapshot {
  topics: Array<Record<string, unknown>>;
  period_ms: number;
  time_ms: number;
}

export function watchStats(
  onStats: (snapshot: StatsSnapshot) => void,
  options?: ConnectOptions & {
    periodMs?: number;
    onState?: (state: "up" | "down", detail: Partial<CloseInfo> & { retryMs?: number }) => void;
  },
): { stop(): void };

/** A topic's video playing over WebRTC (WHEP): see watchVideo. */
export interface VideoViewer {
  pc: RTCPeerConnection;
  /** For a <video>'s srcObject. */
  stream: MediaStream;
  /** The viewer's resource on the relay (DELETE ends it). */
  location: string;
  /** Ends the viewer on the relay and closes the connection. */
  close(): Promise<void>;
}

/**
 * Plays `topic`'s video (VP8 or H.264) over WebRTC, by WHEP (POST /v1/whep/{topic}). Rejects
 * with a SluiceError whose `code` is the relay's HTTP status.
 */
export function watchVideo(
  topic: string,
  options?: {
    url?: string;
    token?: string;
    name?: string;
    iceServers?: RTCIceServer[];
    gatherMs?: number;
  },
): Promise<VideoViewer>;
