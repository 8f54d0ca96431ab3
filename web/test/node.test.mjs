// The JavaScript client outside a browser: Node 20 has no global WebSocket, so the client takes
// the npm package `ws`. Against the real relay (`sluice serve`): it subscribes, publishes,
// receives every frame in order with its payload, follows the stats, and a refused upgrade
// rejects with a SluiceError.
import assert from "node:assert/strict";
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
