// The dashboard and the JavaScript client in a real browser: Debian's Chromium, headless,
// driven by playwright-core, against the real relay (`sluice serve` on 127.0.0.1, ephemeral or
// chosen-free ports). Run by ctest:
//   node --test web/test/   (SLUICE_BINARY: the sluice executable; SLUICE_ARTIFACTS: where the
//   screenshot goes)
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, writeFileSync, mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { launch } from "./chromium.mjs";
import { relay as startRelay } from "./relay.mjs";

const SLUICE = process.env.SLUICE_BINARY;
const relay = (options) => startRelay(SLUICE, options);
const ARTIFACTS = process.env.SLUICE_ARTIFACTS || tmpdir();
assert.ok(SLUICE, "SLUICE_BINARY: the sluice executable");

let browser;
before(async () => {
  browser = await launch();
});
after(async () => { await browser?.close(); });

async function freePort() {
  const s = createServer();
  s.listen(0, "127.0.0.1");
  await once(s, "listening");
  const port = s.address().port;
  s.close();
  await once(s, "close");
  return port;
}

// A page of `url` whose console errors and page errors are collected.
async function open(url) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  return { page, errors };
}

test("the page loads without errors; a topic and a subscriber appear when used and go when they end", async () => {
  const r = await relay({ env: { SLUICE_TOPIC_IDLE_TIMEOUT_MS: "300" } });
  try {
    const { page, errors } = await open(r.dashboard);
    await page.waitForSelector("#state[data-state=up]", { timeout: 5000 });
    await page.waitForSelector("#empty:not([hidden])");
    assert.match(await page.textContent("#empty"), /sluice serve --demo/);
    // Another page publishes through the JavaScript client.
    const producer = await browser.newPage();
    await producer.goto(r.http + "/healthz");
    await producer.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.pub = await sluice.publish("browser.topic");
      await window.pub.send("hello");
    });
    // (a bound for a stuck page, not a latency figure: a busy machine may take seconds)
    await page.waitForSelector('tr[data-topic="browser.topic"]', { timeout: 15000 });
    // A subscriber appears in the topic's table, and goes when it leaves.
    await page.click('tr[data-topic="browser.topic"]');
    await producer.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.sub = await sluice.subscribe("browser.topic", { name: "page-viewer" });
    });
    await page.waitForSelector('tr[data-subscriber="page-viewer"]', { timeout: 2000 });
    await producer.evaluate(() => window.sub.close());
    await page.waitForSelector('tr[data-subscriber="page-viewer"]', { state: "detached", timeout: 2000 });
    await producer.evaluate(() => window.pub.close());
    await page.waitForSelector('tr[data-topic="browser.topic"]', { state: "detached", timeout: 5000 });
    assert.deepEqual(errors, []);
    await page.close();
    await producer.close();
  } finally {
    await r.stop();
  }
});

test("under --demo: a slow viewer's gaps and a throttled producer show as they happen; charts draw and update", async () => {
  const r = await relay({ args: ["--demo"] });
  try {
    const { page, errors } = await open(r.dashboard);
    await page.waitForSelector('tr[data-topic="demo.camera"]', { timeout: 15000 });
    await page.click('tr[data-topic="demo.camera"]');
    // The slow viewer loses frames, announced: the count it shows grows.
    await page.waitForFunction(() => {
      const cell = document.querySelector('tr[data-subscriber="slow-viewer"] [data-field=lost]');
      return cell && Number(cell.dataset.total) > 0;
    }, null, { timeout: 10000 });
    assert.match(await page.textContent('tr[data-subscriber="slow-viewer"] [data-field=lost]'),
      /slow_consumer \d+/);
    // The telemetry producer is held back: its topic says so, with its queue at the budget.
    await page.waitForFunction(() => {
      const row = document.querySelector('tr[data-topic="demo.telemetry"]');
      return row && / [1-9]\d* slow-downs/.test(row.querySelector("[data-field=throttle]").textContent);
    }, null, { timeout: 10000 });
    // The charts draw (pixels other than the background) and move.
    const pixels = () => page.evaluate(() => {
      const c = document.querySelector("#chart-rate canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let ink = 0;
      let sum = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) ink++;
        sum = (sum + d[i] * (i % 251) + d[i + 2]) % 1000000007;
      }
      return { ink, sum };
    });
    await page.waitForTimeout(1500);
    const first = await pixels();
    await page.waitForTimeout(1500);
    const second = await pixels();
    assert.ok(first.ink > 500, `the rate chart has ${first.ink} drawn pixels`);
    assert.notEqual(first.sum, second.sum, "the chart did not change in 1.5 s");
    // The stage: its gate and both workers.
    await page.click('tr[data-topic="demo.detect"]');
    await page.waitForSelector('tr[data-worker="fast-model"]');
    await page.waitForSelector('tr[data-worker="slow-model"]');
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.click('tr[data-topic="demo.camera"]');
    await page.click("#preview-toggle");
    await page.waitForSelector("#preview-image:not([hidden])", { timeout: 5000 });
    await page.waitForTimeout(1000);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });
    assert.deepEqual(errors, []);
    await page.close();
  } finally {
    await r.stop();
  }
});

test("the image preview shows a published PNG", async () => {
  const r = await relay({ config: '[[topic]]\nname = "snapshot"\nmode = "realtime"\ncontent_type = "image/png"\n' });
  try {
    const producer = await browser.newPage();
    await producer.goto(r.http + "/healthz");
    // Four coloured quadrants, as PNG, published every 100 ms.
    await producer.evaluate(async () => {
      const c = new OffscreenCanvas(64, 48);
      const g = c.getContext("2d");
      const colours = [[255, 0, 0], [0, 200, 0], [0, 0, 255], [250, 200, 0]];
      colours.forEach(([r, gg, b], i) => {
        g.fillStyle = `rgb(${r},${gg},${b})`;
        g.fillRect((i % 2) * 32, Math.floor(i / 2) * 24, 32, 24);
      });
      const png = new Uint8Array(await (await c.convertToBlob({ type: "image/png" })).arrayBuffer());
      const sluice = await import("/sluice.js");
      const pub = await sluice.publish("snapshot");
      window.timer = setInterval(() => pub.send(png), 100);
    });
    const { page, errors } = await open(r.dashboard);
    await page.click('tr[data-topic="snapshot"]');
    await page.click("#preview-toggle");
    await page.waitForFunction(() => {
      const img = document.querySelector("#preview-image");
      return !img.hidden && img.complete && img.naturalWidth === 64;
    }, null, { timeout: 5000 });
    const seen = await page.evaluate(() => {
      const img = document.querySelector("#preview-image");
      const c = document.createElement("canvas");
      c.width = 64;
      c.height = 48;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      return [[16, 12], [48, 12], [16, 36], [48, 36]].map(([x, y]) =>
        Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3)));
    });
    assert.deepEqual(seen, [[255, 0, 0], [0, 200, 0], [0, 0, 255], [250, 200, 0]]);
    assert.deepEqual(errors, []);
    await producer.evaluate(() => clearInterval(window.timer));
    await page.close();
    await producer.close();
  } finally {
    await r.stop();
  }
});

test("the JavaScript client: frames in order; a page that stops reading gets a gap notice", async () => {
  const r = await relay({
    config: '[[topic]]\nname = "rt"\nmode = "realtime"\ndepth = 64\n',
    env: { SLUICE_MAX_SEND_TIMEOUTS: "100" },  // (a page blocked for 2 s is late, not stalled)
  });
  try {
    const { page, errors } = await open(r.http + "/healthz");
    const inOrder = await page.evaluate(async () => {
      const sluice = await import("/sluice.js");
      const sub = await sluice.subscribe("rt", { depth: 64, name: "in-order" });
      const pub = await sluice.publish("rt");
      for (let i = 0; i < 50; i++) await pub.send(`frame ${i}`);
      const got = [];
      for await (const m of sub) {
        if (m.kind !== "frame") continue;
        got.push([Number(m.index), new TextDecoder().decode(m.payload)]);
        if (got.length === 50) break;
      }
      await sub.close();
      await pub.close();
      return got;
    });
    assert.deepEqual(inOrder, Array.from({ length: 50 }, (_, i) => [i, `frame ${i}`]));

    // A subscriber page whose main thread is busy for 2 s while 256 KiB frames stream in.
    const reader = await browser.newPage();
    await reader.goto(r.http + "/healthz");
    await reader.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.sub = await sluice.subscribe("rt", { depth: 2, name: "blocked-page" });
      window.gaps = [];
      window.frames = 0;
      window.order = [];  // "f" per frame, "g" per gap, as dispatched
      window.sub.addEventListener("gap", (e) => { window.gaps.push(e.detail); window.order.push("g"); });
      window.sub.addEventListener("frame", () => { window.frames++; window.order.push("f"); });
    });
    const blocked = reader.evaluate(() => {
      const until = Date.now() + 2000;
      while (Date.now() < until) { /* not reading */ }
    });
    await page.evaluate(async () => {
      const sluice = await import("/sluice.js");
      const pub = await sluice.publish("rt", { highWaterBytes: 8 << 20 });
      const big = new Uint8Array(256 * 1024);
      for (let i = 0; i < 300; i++) await pub.send(big);
      await pub.close();
    });
    await blocked;
    await reader.waitForFunction(() => window.gaps.length > 0, null, { timeout: 10000 });
    const gaps = await reader.evaluate(() => window.gaps);
    assert.equal(gaps[0].kind, "gap");
    assert.equal(gaps[0].reason, "slow_consumer");
    assert.ok(gaps.reduce((a, g) => a + g.count, 0) > 0);
    // Its window (16 by default): what reached the page while it was busy is at most the frames
    // it had not acknowledged, not what the network buffered (tens of 256 KiB frames here).
    const order = await reader.evaluate(() => window.order.join(""));
    const stale = order.indexOf("g");
    assert.ok(stale >= 0 && stale <= 16 + 2 + 1, `${stale} frames before the first gap: ${order.slice(0, 80)}`);
    assert.deepEqual(errors, []);
    await reader.close();
    await page.close();
  } finally {
    await r.stop();
  }
});

test("a page decoding video (WebCodecs) that stops reading resumes at a keyframe and decodes on; a late page starts at the latest keyframe", async () => {
  // A VP8 stream made in the page by Chromium's own encoder: one GOP of 10 frames of noise
  // (a keyframe, 9 delta frames), sent again and again (each GOP decodes alone), flagged
  // ITEM_DELTA as a camera ingest flags them. The viewers decode with VideoDecoder, which
  // refuses a delta frame after configure() or reset(): each viewer resets its decoder at every
  // gap, so a resume anywhere but at a keyframe is a decode error, not a silent smear.
  const r = await relay({
    config: '[[topic]]\nname = "video"\nmode = "realtime"\ndepth = 32\n',
    env: { SLUICE_MAX_SEND_TIMEOUTS: "100" },  // (a page blocked for 3 s is late, not stalled)
  });
  const viewer = async (depth) => {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(r.http + "/healthz");
    await page.evaluate(async (depth) => {
      const sluice = await import("/sluice.js");
      const v = { decoded: 0, errors: [], gaps: [], afterGap: [], first: null, keyframes: 0 };
      window.v = v;
      const make = () => {
        const d = new VideoDecoder({
          output: (f) => { v.decoded++; f.close(); },
          error: (e) => v.errors.push(String(e)),
        });
        d.configure({ codec: "vp8" });
        return d;
      };
      let decoder = make();
      let resetNext = false;
      v.sub = await sluice.subscribe("video", { depth, name: "decoding-page" });
      v.sub.addEventListener("gap", (e) => {
        v.gaps.push(e.detail);
        resetNext = true;
      });
      v.sub.addEventListener("frame", (e) => {
        const m = e.detail;
        const key = (m.flags & sluice.ITEM_DELTA) === 0;
        if (v.first === null) v.first = { index: Number(m.index), key };
        if (resetNext) {
          v.afterGap.push({ index: Number(m.index), key });
          if (decoder.state === "closed") decoder = make();
          decoder.reset();
          decoder.configure({ codec: "vp8" });
          resetNext = false;
        }
        if (key) v.keyframes++;
        try {
          decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta",
            timestamp: Number(m.index) * 33333, data: m.payload }));
        } catch (err) {
          v.errors.push(`frame ${m.index}: ${err}`);
        }
      });
    }, depth);
    return { page, errors };
  };
  try {
    const { page: producer, errors } = await open(r.http + "/healthz");
    const gop = await producer.evaluate(async () => {
      const chunks = [];
      const encoder = new VideoEncoder({
        output: (c) => { const b = new Uint8Array(c.byteLength); c.copyTo(b); chunks.push({ key: c.type === "key", b }); },
        error: (e) => { throw e; },
      });
      encoder.configure({ codec: "vp8", width: 1280, height: 720, bitrate: 40_000_000, framerate: 30 });
      const canvas = new OffscreenCanvas(1280, 720);
      const ctx = canvas.getContext("2d");
      const pixels = ctx.createImageData(1280, 720);
      for (let i = 0; i < 10; i++) {
        crypto.getRandomValues(pixels.data.subarray(0, 65536));
        for (let o = 65536; o < pixels.data.length; o += 65536) {
          crypto.getRandomValues(pixels.data.subarray(o, Math.min(o + 65536, pixels.data.length)));
        }
        ctx.putImageData(pixels, 0, 0);
        const frame = new VideoFrame(canvas, { timestamp: i * 33333 });
        encoder.encode(frame, { keyFrame: i === 0 });
        frame.close();
      }
      await encoder.flush();
      window.gop = chunks;
      return chunks.map((c) => ({ key: c.key, bytes: c.b.byteLength }));
    });
    assert.equal(gop.length, 10);
    assert.deepEqual(gop.map((c) => c.key), [true, false, false, false, false, false, false, false, false, false]);
    const gopBytes = gop.reduce((a, c) => a + c.bytes, 0);

    const steady = await viewer(32);  // (a whole burst of 3 GOPs fits)
    const blocked = await viewer(4);
    // Publishes `gops` GOPs (each frame flagged), as fast as the relay takes them.
    const publish = (gops) => producer.evaluate(async (n) => {
      const sluice = await import("/sluice.js");
      window.pub ??= await sluice.publish("video", { highWaterBytes: 4 << 20 });
      for (let g = 0; g < n; g++) {
        for (const c of window.gop) {
          await window.pub.send(c.b, { flags: c.key ? 0 : sluice.ITEM_DELTA });
        }
      }
    }, gops);
    await publish(2);
    await steady.page.waitForFunction(() => window.v.decoded >= 15, null, { timeout: 20000 });
    // The blocked page stops reading while ~24 MB of video go by: its main thread busy (in
    // synchronous requests for the relay's stats) until the topic has them all, however long
    // publishing takes on a loaded machine.
    const stalledAt = await blocked.page.evaluate(() => ({ afterGap: window.v.afterGap.length, decoded: window.v.decoded }));
    const steadyBefore = await steady.page.evaluate(() => window.v.decoded);
    const burst = 10 * Math.ceil((24 << 20) / gopBytes);
    const published = await producer.evaluate(() => Number(window.pub?.next ?? 0n));
    const stall = blocked.page.evaluate((until) => {
      const give_up = Date.now() + 60000;
      for (;;) {
        const x = new XMLHttpRequest();
        x.open("GET", "/v1/stats", false);
        x.send();
        const t = JSON.parse(x.responseText).topics.find((topic) => topic.name === "video");
        if ((t && t.published >= until) || Date.now() > give_up) return;
      }
    }, published + burst);
    await publish(burst / 10);
    await stall;
    // What it resumes at comes after its gap: a GOP at a time until it has (its window held it
    // to 16 frames while blocked, so it resumes once it has processed them and a keyframe comes).
    const resumed = (at) => window.v.afterGap.length > at.afterGap && window.v.decoded > at.decoded + 10;
    // (GOPs keep coming until it has: a bound for a stuck page, not a figure — under the
    // sanitizers on a loaded machine a page takes a while to work through what it was sent)
    const giveUp = Date.now() + 120000;
    while (!(await blocked.page.evaluate(resumed, stalledAt)) && Date.now() < giveUp) {
      await publish(1);
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(await blocked.page.evaluate(resumed, stalledAt),
      `the blocked page did not resume: ${JSON.stringify(await blocked.page.evaluate(() =>
        ({ decoded: window.v.decoded, afterGap: window.v.afterGap, gaps: window.v.gaps })))}`);
    const b = await blocked.page.evaluate(() => window.v);
    assert.ok(b.gaps.some((g) => g.reason === "slow_consumer"), JSON.stringify(b.gaps));
    assert.ok(b.afterGap.every((f) => f.key), `resumed at a delta frame: ${JSON.stringify(b.afterGap)}`);
    assert.deepEqual(b.errors, []);
    assert.equal(b.first.key, true);

    // A page that joins now, mid-GOP: it starts at the latest keyframe, at once.
    await publish(1);
    await producer.evaluate(async () => {
      const sluice = await import("/sluice.js");
      for (const c of window.gop.slice(0, 4)) await window.pub.send(c.b, { flags: c.key ? 0 : sluice.ITEM_DELTA });
    });
    const late = await viewer(4);  // (4 deep, it starts 5 behind: not lapped for that)
    await late.page.waitForFunction(() => window.v.decoded >= 4, null, { timeout: 20000 });
    const l = await late.page.evaluate(() => window.v);
    assert.deepEqual(l.first.key, true);
    assert.deepEqual(l.gaps, [], "the late page waited for a keyframe instead of starting at the kept one");
    assert.deepEqual(l.errors, []);

    // The page beside it decoded on meanwhile, without an error.
    const s = await steady.page.evaluate(() => window.v);
    assert.deepEqual(s.errors, []);
    assert.ok(s.decoded > steadyBefore + 10, `${s.decoded} after ${steadyBefore}`);
    assert.deepEqual([...errors, ...steady.errors, ...blocked.errors, ...late.errors], []);
    for (const p of [producer, steady.page, blocked.page, late.page]) await p.close();
  } finally {
    await r.stop();
  }
});

test("the page keeps working when the relay restarts", async () => {
  const port = await freePort();
  let r = await relay({ httpPort: port, env: { SLUICE_TOPIC_IDLE_TIMEOUT_MS: "600000" } });
  const { page } = await open(r.dashboard);
  try {
    await page.waitForSelector("#state[data-state=up]", { timeout: 5000 });
    await r.stop();
    await page.waitForSelector("#state[data-state=down]", { timeout: 5000 });
    assert.match(await page.textContent("#state"), /relay unreachable/);
    r = await relay({ httpPort: port });
    await page.waitForSelector("#state[data-state=up]", { timeout: 10000 });
    const producer = await browser.newPage();
    await producer.goto(r.http + "/healthz");
    await producer.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.pub = await sluice.publish("after.restart");
      await window.pub.send("back");
    });
    await page.waitForSelector('tr[data-topic="after.restart"]', { timeout: 3000 });
    await producer.close();
  } finally {
    await page.close();
    await r.stop();
  }
});

test("the JavaScript client with several relays: when its relay stops it continues on another, told by a gap", async () => {
  const topic = '[[topic]]\nname = "feed"\nmode = "realtime"\ndepth = 64\n';
  const r1 = await relay({ config: topic });
  const r2 = await relay({ config: topic });
  const ws = (r) => r.http.replace(/^http/, "ws");
  try {
    const { page, errors } = await open(r1.http + "/healthz");
    await page.evaluate(async (urls) => {
      const sluice = await import("/sluice.js");
      window.events = [];
      window.sub = await sluice.subscribe("feed", { urls, reconnect: true, name: "moving", depth: 64 });
      window.sub.addEventListener("frame", (e) =>
        window.events.push(["frame", new TextDecoder().decode(e.detail.payload)]));
      window.sub.addEventListener("gap", (e) =>
        window.events.push(["gap", e.detail.reason, e.detail.count]));
      window.sub.addEventListener("reconnected", (e) => window.events.push(["to", e.detail.url]));
      window.sub.addEventListener("close", () => window.events.push(["closed"]));
      const pub = await sluice.publish("feed");
      for (let i = 0; i < 5; i++) await pub.send(`one ${i}`);
      await pub.close();
    }, [ws(r1), ws(r2)]);
    await page.waitForFunction(() => window.events.length >= 5, null, { timeout: 10000 });
    await r1.stop();  // (its viewers are closed with 1000: the relay is shutting down)

    // Another page publishes to the second relay until the first page has five of its frames.
    const producer = await browser.newPage();
    await producer.goto(r2.http + "/healthz");
    await producer.evaluate(async () => {
      const sluice = await import("/sluice.js");
      const pub = await sluice.publish("feed");
      let i = 0;
      window.timer = setInterval(() => { pub.send(`two ${i++}`); }, 50);
    });
    await page.waitForFunction(
      () => window.events.filter((e) => e[0] === "frame" && e[1].startsWith("two")).length >= 5,
      null, { timeout: 20000 });
    const events = await page.evaluate(() => window.events);
    assert.deepEqual(events.slice(0, 5), [0, 1, 2, 3, 4].map((i) => ["frame", `one ${i}`]));
    // Then, for each reconnect (the first may reach the stopping relay once more), a gap and the
    // relay it reached; the last is the second relay, whose frames follow in order.
    let at = 5;
    let to = "";
    while (events[at][0] === "gap") {
      assert.deepEqual(events[at], ["gap", "reconnected", 0]);
      assert.equal(events[at + 1][0], "to");
      to = events[at + 1][1];
      at += 2;
    }
    assert.ok(to.startsWith(ws(r2)), `${to}: not ${ws(r2)}`);
    const after = events.slice(at).map((e) => e[0] === "frame" ? Number(e[1].split(" ")[1]) : -1);
    assert.ok(after.length >= 5, JSON.stringify(events));
    assert.ok(after.every((n, i) => n >= 0 && (i === 0 || n > after[i - 1])), JSON.stringify(events));
    assert.equal(await page.evaluate(() => window.sub.reconnects), (at - 5) / 2);
    assert.deepEqual(errors.filter((e) => !e.includes("WebSocket")), []);
    await producer.evaluate(() => clearInterval(window.timer));
    await producer.close();
    await page.evaluate(() => window.sub.close());
    await page.close();
  } finally {
    await r1.stop();
    await r2.stop();
  }
});

test("a cluster topic shows the relays that serve it, this one marked, and forgets one that stops", async () => {
  const natsPort = await freePort();
  const nats = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(natsPort)], { stdio: "ignore" });
  const config = (name) => `[nats]\nurls = ["nats://127.0.0.1:${natsPort}"]\nname = "${name}"\n` +
    '[[topic]]\nname = "feed"\nmode = "realtime"\nscope = "cluster"\n';
  let r1;
  let r2;
  try {
    await new Promise((resolve) => setTimeout(resolve, 300));  // (nats-server listens)
    r1 = await relay({ config: config("relay-one") });
    r2 = await relay({ config: config("relay-two") });
    const { page, errors } = await open(r1.dashboard);
    await page.waitForSelector("#state[data-state=up]", { timeout: 5000 });
    // A subscriber on each relay (a relay has a topic once it is used); the second one's count
    // travels in that relay's announcements.
    const viewer = await browser.newPage();
    await viewer.goto(r2.http + "/healthz");
    await viewer.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.sub = await sluice.subscribe("feed", { name: "far-viewer" });
    });
    await page.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.sub = await sluice.subscribe("feed", { name: "near-viewer" });
    });
    const relays = 'tr[data-topic="feed"] [data-field=relays]';
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === " · 2 relays",
      relays, { timeout: 10000 });
    await page.click('tr[data-topic="feed"]');
    await page.waitForSelector("#relays:not([hidden])");
    await page.waitForFunction(() =>
      document.querySelector('#relay-list [data-relay="relay-two"]')?.textContent.includes("(1 subscriber)"),
      null, { timeout: 10000 });
    assert.equal(await page.textContent('#relay-list [data-relay="relay-one"] b'), "relay-one");
    assert.equal(await page.$('#relay-list [data-relay="relay-two"] b'), null);
    // The second relay stops: within its presence's lifetime (3 s) the first forgets it.
    await viewer.close();
    await r2.stop();
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === " · 1 relays",
      relays, { timeout: 10000 });
    assert.equal(await page.$('#relay-list [data-relay="relay-two"]'), null);
    assert.deepEqual(errors, []);
    await page.close();
  } finally {
    await r1?.stop();
    await r2?.stop();
    nats.kill("SIGTERM");
  }
});
