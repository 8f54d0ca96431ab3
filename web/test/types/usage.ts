// The JavaScript client's types (client/sluice.d.ts) checked by TypeScript's compiler in strict
// mode against code that uses the whole API as a user would: `tsc --noEmit -p web/test/types`
// (the test js_client_types). Never run: only type-checked.
import {
  FLAGGED_FRAME_HEADER_BYTES,
  ITEM_DELTA,
  SluiceError,
  decodeFrame,
  encodeFrame,
  publish,
  subscribe,
  watchStats,
  watchVideo,
  type CloseInfo,
  type Received,
} from "../../client/sluice.js";

export async function usage(video: HTMLVideoElement): Promise<void> {
  const sub = await subscribe("cam", { url: "ws://127.0.0.1:7401", name: "page", window: 16,
    reconnect: true, reconnectForMs: 10000 });
  for await (const m of sub) {
    const r: Received = m;
    if (r.kind === "frame") {
      const index: bigint = r.index;
      const bytes: Uint8Array = r.payload;
      console.log(index, bytes.byteLength, r.flags & ITEM_DELTA);
    } else if (r.kind === "gap") {
      console.log(r.count, r.reason);
    }
    break;
  }
  const closed: CloseInfo = await sub.close();
  console.log(closed.code, closed.reason);

  const pub = await publish("telemetry", { urls: ["ws://a:7401", "ws://b:7401"], reconnect: true,
    reconnectForMs: 20000, highWaterBytes: 1 << 20, producer: "sensor-1" });
  await pub.send(new Uint8Array([1, 2, 3]), { index: 0n, timestampNs: 0, flags: ITEM_DELTA });
  await pub.send("text");
  await pub.flush();
  const counts: number[] = [pub.sent, pub.acked, pub.resent, pub.reconnects, pub.unacknowledged];
  console.log(counts, pub.slowed);
  pub.addEventListener("slow_down", () => {});
  await pub.close();

  const frame: Uint8Array = encodeFrame(1n, 0, "x", { headerBytes: FLAGGED_FRAME_HEADER_BYTES });
  console.log(decodeFrame(frame, 24).index);

  const watcher = watchStats((s) => console.log(s.topics.length, s.time_ms),
    { periodMs: 500, onState: (state, detail) => console.log(state, detail.retryMs) });
  watcher.stop();

  try {
    const viewer = await watchVideo("cam", { name: "v", iceServers: [] });
    video.srcObject = viewer.stream;
    await viewer.close();
  } catch (e) {
    if (e instanceof SluiceError) console.log(e.code, e.reason);
  }
}
