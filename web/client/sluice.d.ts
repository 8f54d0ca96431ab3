// Types of the relay's JavaScript client (sluice.js). See docs/protocol.md for the protocol.

/** Bytes of the header before every frame's payload. */
export const FRAME_HEADER_BYTES: 16;

export type Payload = Uint8Array | ArrayBuffer | ArrayBufferView | string;

/** A frame as received: the producer's index and timestamp (ns), and the payload (a view). */
export interface Frame {
  kind: "frame";
  index: bigint;
  timestampNs: bigint;
  payload: Uint8Array;
}
/** Frames the relay skipped for this subscriber before the next one (a real-time topic). */
export interface Gap {
  kind: "gap";
  count: number;
  reason: string; // e.g. "slow_consumer"
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
                            payload: Payload): Uint8Array;
export function decodeFrame(data: ArrayBuffer | Uint8Array): Frame;

export interface ConnectOptions {
  /** The relay: ws://host:port (default: this page's origin). */
  url?: string;
  /** A principal's token (sent as the subprotocol sluice.bearer.<token>). */
  token?: string;
}

export class Subscription extends EventTarget implements AsyncIterable<Received> {
  readonly topic: string;
  /** Frames received, and frames announced lost by gap notices. */
  readonly received: number;
  readonly lost: number;
  readonly closed: Promise<CloseInfo>;
  [Symbol.asyncIterator](): AsyncIterator<Received>;
  close(): Promise<CloseInfo>;
}

export function subscribe(
  topic: string,
  options?: ConnectOptions & { name?: string; depth?: number },
): Promise<Subscription>;

export class Publisher extends EventTarget {
  readonly topic: string;
  readonly sent: number;
  /** The relay has told this producer to slow down, and not yet to resume. */
  readonly slowed: boolean;
  readonly closed: Promise<CloseInfo>;
  send(payload: Payload, options?: { index?: number | bigint; timestampNs?: number | bigint }):
    Promise<void>;
  close(): Promise<CloseInfo>;
}

export function publish(
  topic: string,
  options?: ConnectOptions & { highWaterBytes?: number },
): Promise<Publisher>;

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
