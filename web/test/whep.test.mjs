// A topic's video in a real browser over WebRTC (WHEP): Debian's Chromium, headless, driven by
// playwright-core, against the real relay (`sluice serve`) fed by `sluice ingest test://` (a
// live test pattern, VP8). Run by ctest:
//   node --test web/test/whep.test.mjs   (SLUICE_BINARY: the sluice executable)
// The churn test: 10 viewers, 3 cycles; under `make soak` (SLUICE_SOAK_SECONDS set: 600) 100
// viewers in cycles for that long. SLUICE_WHEP_VIEWERS chooses another number.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readdirSync, readFileSync } from "node:fs";
import { launch, launchKillable } from "./chromium.mjs";
import { relay as startRelay } from "./relay.mjs";

const SLUICE = process.env.SLUICE_BINARY;
const SOAK_SECONDS = Number(process.env.SLUICE_SOAK_SECONDS || 0);
const VIEWERS = Number(process.env.SLUICE_WHEP_VIEWERS || (SOAK_SECONDS ? 100 : 10));
assert.ok(SLUICE, "SLUICE_BINARY: the sluice executable");

let browser;
before(async () => {
  browser = await launch({ webrtc: true });
});
after(async () => { await browser?.close(); });

// The relay, ICE on loopback; resolves once it listens.
function relay(env = {}) {
  return startRelay(SLUICE, { env: { SLUICE_WHEP_ICE_ADDRESSES: "127.0.0.1",
    SLUICE_WHEP_MAX_VIEWERS: String(VIEWERS + 10), ...env } });
}

// A live camera stand-in: the test pattern, VP8 (a keyframe every second), into `topic`.
function camera(r, topic, { width = 320, height = 240, fps = 15 } = {}) {
  const child = spawn(SLUICE, ["ingest", "test://", "--server", r.grpc, "--topic", topic,
    "--width", String(width), "--height", String(height), "--fps", String(fps)],
  { stdio: ["ignore", "ignore", "inherit"] });
  return {
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      await once(child, "exit");
    },
  };
}

async function metric(r, name) {
  const text = await (await fetch(`${r.http}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : -1;
}

// The relay process's descriptors and threads, and its resident memory (bytes).
function resources(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(status)[1]);
  return { fds: readdirSync(`/proc/${pid}/fd`).length, threads: kb("Threads"), rss: kb("VmRSS") * 1024 };
}

// The page's inbound video as getStats() reports it.
async function inbound(page, expr = "window.sluiceViewer.pc") {
  return page.evaluate(async (e) => {
    // eslint-disable-next-line no-eval
    const pc = eval(e);
    let out = null;
    (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") out = s; });
    return out && { framesDecoded: out.framesDecoded || 0, keyFramesDecoded: out.keyFramesDecoded || 0,
      frameWidth: out.frameWidth || 0, packetsLost: out.packetsLost || 0 };
  }, expr);
}

async function until(what, f, timeoutMs = 30000) {
  const end = Date.now() + timeoutMs;  // (a bound for a stuck page, not a figure)
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

// `n` WHEP viewers of `cam` in `page` (as window.viewers, named `prefix`-i), once every one
// decodes.
async function crowdOn(page, n, prefix) {
  await page.evaluate(async ([count, name]) => {
    const sluice = await import("/sluice.js");
    window.viewers = await Promise.all(
      Array.from({ length: count }, (_, i) => sluice.watchVideo("cam", { name: `${name}-${i}` })));
  }, [n, prefix]);
  await until("the crowd decoding", () => page.evaluate(async () => {
    const counts = await Promise.all(window.viewers.map(async (v) => {
      let f = 0;
      (await v.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") f = s.framesDecoded || 0; });
      return f;
    }));
    return counts.every((f) => f > 0);
  }), 60000);
}

// The relay's descriptors and threads once they stop changing (pipelines are torn down off the
// loops, one after another): two samples alike, 500 ms apart.
async function settled(pid) {
  let last = resources(pid);
  return until("a steady count of descriptors and threads", async () => {
    await new Promise((res) => setTimeout(res, 500));
    const now = resources(pid);
    const steady = now.fds === last.fds && now.threads === last.threads;
    last = now;
    return steady ? now : null;
  }, 60000);
}

test("the viewer page plays a camera's topic: frames decode and keep coming, at the source's size; the dashboard links to it", async () => {
  const r = await relay();
  const cam = camera(r, "cam");
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${r.http}/view/cam`);
    await page.waitForSelector("#state[data-state=playing]", { timeout: 30000 });
    const first = await until("frames decoded", async () => {
      const s = await inbound(page);
      return s && s.framesDecoded >= 10 ? s : null;
    });
    assert.ok(first.keyFramesDecoded >= 1, "it started at a keyframe");
    assert.equal(first.frameWidth, 320);
    // They keep coming, and the <video> plays them.
    await until("more frames", async () => (await inbound(page)).framesDecoded >= first.framesDecoded + 15);
    assert.equal(await page.evaluate(() => document.getElementById("video").videoWidth), 320);
    // The page shows the browser's count and the relay's for this viewer.
    await until("the page's stats", async () => Number(await page.textContent("#frames-decoded")) > 0);
    await until("the relay's count", async () => Number(await page.textContent("#relay-received")) > 0);
    // The relay counts it as a WebRTC viewer.
    assert.equal(await metric(r, "sluice_whep_viewers"), 1);
    // The dashboard's topic detail links here.
    const dash = await browser.newPage();
    await dash.goto(`${r.http}/`);
    await dash.click('tr[data-topic="cam"]', { timeout: 15000 });
    assert.equal(await dash.getAttribute("#detail-watch", "href"), "/view/cam");
    await dash.close();
    // Leaving the page ends the viewer on the relay (its DELETE, or its connection's end).
    await page.close({ runBeforeUnload: true });
    await until("the viewer's end", async () => (await metric(r, "sluice_whep_viewers")) === 0);
    assert.deepEqual(errors, []);
  } finally {
    await cam.stop();
    await r.stop();
  }
});

test("a topic that is not video is refused on the page with the relay's reason", async () => {
  const r = await relay();
  try {
    const page = await browser.newPage();
    await page.goto(`${r.http}/healthz`);
    await page.evaluate(async () => {
      const sluice = await import("/sluice.js");
      window.pub = await sluice.publish("readings");
      window.timer = setInterval(() => window.pub.send('{"t": 21.5}'), 50);
    });
    const viewer = await browser.newPage();
    await viewer.goto(`${r.http}/view/readings`);
    await viewer.waitForSelector("#error:not([hidden])", { timeout: 15000 });
    assert.match(await viewer.textContent("#error"), /WHEP 415: .*no VP8 or H\.264 video/);
    await viewer.close();
    await page.close();
  } finally {
    await r.stop();
  }
});

test(`${VIEWERS} viewers come and go in cycles: the relay's descriptors come back to their baseline and a viewer that stays plays on`, async () => {
  const r = await relay();
  const cam = camera(r, "cam");
  try {
    // One viewer stays throughout.
    const stayer = await browser.newPage();
    await stayer.goto(`${r.http}/view/cam`);
    await stayer.waitForSelector("#state[data-state=playing]", { timeout: 30000 });
    await until("the first frames", async () => ((await inbound(stayer))?.framesDecoded || 0) >= 5);
    const crowd = await browser.newPage();
    await crowd.goto(`${r.http}/healthz`);
    const cycle = async () => {
      await crowdOn(crowd, VIEWERS, "crowd");  // every one connects and decodes
      await crowd.evaluate(() => Promise.all(window.viewers.map((v) => v.close())));
      await until("the crowd's end on the relay", async () => (await metric(r, "sluice_whep_viewers")) === 1);
    };
    await cycle();  // (the first loads what the relay keeps: plugins, thread pools)
    const baseline = await settled(r.child.pid);
    const end = Date.now() + SOAK_SECONDS * 1000;
    let cycles = 0;
    let peakRss = baseline.rss;
    do {
      const before = (await inbound(stayer)).framesDecoded;
      await cycle();
      cycles += 1;
      // Descriptors (ICE and DTLS sockets, pipes) and threads (the pipelines' elements) all
      // given back after each cycle (the last pipelines are torn down off the loops: a bound).
      const now = await until("the relay's baseline", async () => {
        const s = resources(r.child.pid);
        return s.fds === baseline.fds && s.threads === baseline.threads ? s : null;
      }, 60000).catch(() => resources(r.child.pid));
      peakRss = Math.max(peakRss, now.rss);
      assert.equal(now.fds, baseline.fds, `descriptors after cycle ${cycles}`);
      assert.equal(now.threads, baseline.threads, `threads after cycle ${cycles}`);
      // The viewer that stayed kept playing through the crowd's coming and going.
      assert.ok((await inbound(stayer)).framesDecoded > before, `the stayer played on in cycle ${cycles}`);
    } while (Date.now() < end || cycles < 2);
    const last = resources(r.child.pid);
    // Memory flat: within 64 MiB of the baseline after every cycle (allocator arenas, GStreamer's
    // caches) — what a leak of one pipeline per viewer would pass in a few cycles.
    assert.ok(last.rss - baseline.rss < 64 * 1024 * 1024,
      `RSS ${baseline.rss} -> ${last.rss} (peak ${peakRss}) after ${cycles} cycles of ${VIEWERS}`);
    console.log(JSON.stringify({ viewers: VIEWERS, cycles, baseline, last, peakRss }));
    await crowd.close();
    await stayer.close();
  } finally {
    await cam.stop();
    await r.stop();
  }
});

// A sample of /metrics with a label, e.g. metricWith(r, "sluice_whep_viewers_ended_total", 'reason="connection_lost"').
async function metricWith(r, name, label) {
  const text = await (await fetch(`${r.http}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + "{") && l.includes(label));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}

// Viewers that vanish without DELETE — a page that closes its RTCPeerConnection, pages closed,
// a whole browser killed — are ended by the relay once their RTCP has been silent for
// whep.connect_timeout_ms (connection_lost), and its descriptors and threads come back to
// their baseline. Without that, webrtcbin stays "connected" for as long as the relay runs.
test(`${VIEWERS} viewers that vanish without DELETE are ended (connection_lost) and release everything`, async () => {
  const CONNECT_TIMEOUT_MS = 3000;
  const r = await relay({ SLUICE_WHEP_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS) });
  const cam = camera(r, "cam");
  // A browser of its own, to kill.
  const killable = await launchKillable({ webrtc: true });
  const doomed = killable.browser;
  const crowd = async (b, n) => {
    const page = await b.newPage();
    await page.goto(`${r.http}/healthz`);
    await crowdOn(page, n, "gone");
    return page;
  };
  try {
    // A first crowd, ended with DELETE, so that what the relay keeps once loaded is in the baseline.
    const warm = await crowd(browser, 2);
    await warm.evaluate(() => Promise.all(window.viewers.map((v) => v.close())));
    await warm.close();
    await until("the warm-up's end", async () => (await metric(r, "sluice_whep_viewers")) === 0);
    const baseline = await settled(r.child.pid);
    const lostBefore = await metricWith(r, "sluice_whep_viewers_ended_total", 'reason="connection_lost"');
    const third = Math.max(1, Math.floor(VIEWERS / 3));
    // 1. Pages that close their peer connections and send nothing.
    const closing = await crowd(browser, third);
    await closing.evaluate(() => { for (const v of window.viewers) v.pc.close(); });
    // 2. Pages closed (no beforeunload: no DELETE).
    const closed = await crowd(browser, third);
    // 3. The rest in a browser that is killed.
    await crowd(doomed, VIEWERS - 2 * third);
    // (the first third may have ended already: their RTCP stopped seconds ago)
    await closed.evaluate(() => { window.onpagehide = null; });
    await closed.close({ runBeforeUnload: false });
    await killable.server.kill();
    // Every one ends, for its silence (a bound for a stuck relay, not a figure).
    await until("every vanished viewer's end", async () => (await metric(r, "sluice_whep_viewers")) === 0,
      CONNECT_TIMEOUT_MS + 30000);
    // (A browser that dies may still say so — ICE failing, DTLS closing — before it is silent
    // long enough: those end as connection_failed or connection_closed.)
    const lost = (await metricWith(r, "sluice_whep_viewers_ended_total", 'reason="connection_lost"')) - lostBefore;
    const failed = await metricWith(r, "sluice_whep_viewers_ended_total", 'reason="connection_failed"');
    const closedByPeer = await metricWith(r, "sluice_whep_viewers_ended_total", 'reason="connection_closed"');
    const deleted = await metricWith(r, "sluice_whep_viewers_ended_total", 'reason="deleted"');
    assert.equal(deleted, 2, "only the warm-up's viewers were deleted");
    assert.equal(lost + failed + closedByPeer, VIEWERS, `connection_lost ${lost}, failed ${failed}, closed ${closedByPeer}`);
    assert.ok(lost >= third, `connection_lost: ${lost} of ${VIEWERS}`);
    const now = await settled(r.child.pid);
    assert.equal(now.fds, baseline.fds, "descriptors back to the baseline");
    assert.equal(now.threads, baseline.threads, "threads back to the baseline");
    await closing.close();
  } finally {
    await killable.server.kill().catch(() => {});
    await cam.stop();
    await r.stop();
  }
});
