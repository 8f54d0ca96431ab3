// The JavaScript client outside a browser: Node 20 has no global WebSocket, so the client takes
// the npm package `ws`. Against the real relay (`sluice serve`): it subscribes, publishes,
// receives every frame in order with its payload, follows the stats, and a refused upgrade
// rejects with a SluiceError.
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";

import { publish, SluiceError, subscribe, watchStats } from "../client/sluice.js";
import { relay } from "./relay.mjs";

test("in Node without a global WebSocket the client publishes, subscribes and follows the stats",
  async () => {
    assert.equal(typeof globalThis.WebSocket === "undefined" ||
      process.versions.node.split(".")[0] >= 22, true);
    const r = await relay(process.env.SLUICE_BINARY);
    try {
      const url = r.http.replace("http://", "ws://");
      const sub = await subscribe("node.topic", { url, name: "node" });
      const pub = await publish("node.topic", { url });
      for (let i = 0; i < 20; i++) await pub.send(`frame ${i}`);
      const got = [];
      for await (const m of sub) {
        if (m.kind !== "frame") continue;
        got.push(new TextDecoder().decode(m.payload));
        if (got.length === 20) break;
      }
      assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => `frame ${i}`));
      const snapshot = await new Promise((resolve) => {
        const w = watchStats((s) => {
          w.stop();
          resolve(s);
        }, { url, periodMs: 100 });
      });
      assert.ok(snapshot.topics.some((t) => t.name === "node.topic"), JSON.stringify(snapshot));
      await pub.close();
      await assert.rejects(subscribe("bad name!", { url }), SluiceError);
    } finally {
      await r.stop();
    }
  });

// A reconnecting publisher keeps what the relay has not acknowledged: the relay is stopped while
// frames are unacknowledged (SIGSTOP), killed and started again on the same port; the publisher
// connects again and sends exactly those frames, in order, and each goes in once.
test("a reconnecting publisher resends exactly the unacknowledged frames after a relay restart",
  async () => {
    const config = '[[topic]]\nname = "kept"\nmode = "lossless"\n';
    const first = await relay(process.env.SLUICE_BINARY, { config });
    const httpPort = Number(new URL(first.http).port);
    let second = null;
    try {
      const url = first.http.replace("http://", "ws://");
      const pub = await publish("kept", { url, reconnect: true, reconnectForMs: 20000 });
      for (let i = 0; i < 10; i++) await pub.send(`acked ${i}`);
      await pub.flush();
      assert.equal(pub.acked, 10);
      first.child.kill("SIGSTOP");
      await new Promise((r) => setTimeout(r, 200));
      for (let i = 0; i < 25; i++) await pub.send(`pending ${i}`);
      assert.equal(pub.unacknowledged, 25);
      first.child.kill("SIGKILL");
      await once(first.child, "exit");
      second = await relay(process.env.SLUICE_BINARY, { config, httpPort });
      await pub.flush();
      assert.equal(pub.resent, 25);
      assert.equal(pub.reconnects, 1);
      const stats = await (await fetch(`${second.http}/v1/stats`)).json();
      const kept = stats.topics.find((t) => t.name === "kept");
      assert.equal(kept.published, 25, JSON.stringify(kept)); // exactly the unacknowledged ones
      await pub.close();
    } finally {
      await first.stop();
      if (second) await second.stop();
    }
  });
