// M1, glass to glass: how long a camera's frame takes to be on a browser's screen through
// Sluice, against WebRTC alone (the same browser sending to itself, no server) in the same run.
//
// The camera is a page of headless Chromium (Debian's, driven by playwright-core): 30 times a
// second it paints the time (Date.now(), in ms) into a 640x360 canvas as two rows of black and
// white blocks, and
//   Sluice        encodes the canvas with WebCodecs' VP8 encoder (real-time mode, 1.5 Mbit/s, a
//                 keyframe a second) and publishes each chunk to a topic of `sluice serve` over
//                 the WebSocket client (delta frames flagged); a viewer page plays the topic
//                 over WHEP (watchVideo: the relay's webrtcbin, ICE on 127.0.0.1);
//   WebRTC alone  sends the canvas's captured track over an RTCPeerConnection (VP8, Chromium's
//                 own encoder and pacing) to the same kind of viewer page: the floor of this
//                 machine's browser for encode, RTP, jitter buffer, decode and display.
// The viewer reads the blocks back from each frame it is about to show
// (requestVideoFrameCallback: the frame drawn into a canvas) and takes its display time minus
// the painted time. Both pages run in one browser, so one clock. Each path is measured for
// SLUICE_LATENCY_SECONDS (default 10) after 2 s of warm-up.
// Run: make bench-media (after the CPU/RSS part), or
//   SLUICE_BINARY=build/src/cli/sluice node web/bench/whep_latency.mjs
import { launch } from "../test/chromium.mjs";
import { relay as startRelay } from "../test/relay.mjs";

const SLUICE = process.env.SLUICE_BINARY || "build/src/cli/sluice";
const SECONDS = Number(process.env.SLUICE_LATENCY_SECONDS || 10);
const WARMUP_MS = 2000;

// In both pages: the stamp's geometry. 41 bits of Date.now() (ms) in each of two rows of 16x16
// blocks (a bit set: white); a frame whose rows differ (mid-update, smeared) is not counted.
const GEOMETRY = { width: 640, height: 360, block: 15, rows: [8, 40], bits: 41 };

const CAMERA = `(() => {
  const g = ${JSON.stringify(GEOMETRY)};
  const canvas = document.createElement("canvas");
  canvas.width = g.width;
  canvas.height = g.height;
  document.body.append(canvas);
  const ctx = canvas.getContext("2d");
  window.paint = () => {
    const now = Date.now();
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, g.width, g.height);
    for (const y of g.rows) {
      for (let b = 0; b < g.bits; b++) {
        ctx.fillStyle = Math.floor(now / 2 ** b) % 2 ? "#fff" : "#000";
        ctx.fillRect(b * g.block, y, g.block, 24);
      }
    }
    return now;
  };
  window.camera = canvas;
})()`;

const VIEWER = `(() => {
  const g = ${JSON.stringify(GEOMETRY)};
  const canvas = new OffscreenCanvas(g.width, g.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  window.samples = [];
  window.unreadable = 0;
  window.measure = (video) => {
    const read = (pixels, y) => {
      let v = 0;
      for (let b = 0; b < g.bits; b++) {
        const o = ((y + 12) * g.width + b * g.block + 7) * 4;
        if (pixels[o] > 128) v += 2 ** b;
      }
      return v;
    };
    const onFrame = (now, meta) => {
      ctx.drawImage(video, 0, 0, g.width, g.height);
      const pixels = ctx.getImageData(0, 0, g.width, g.height).data;
      const a = read(pixels, g.rows[0]);
      const b = read(pixels, g.rows[1]);
      const shown = performance.timeOrigin + (meta.expectedDisplayTime || now);
      if (a === b && Math.abs(shown - a) < 10000) window.samples.push(shown - a);
      else window.unreadable++;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
})()`;

// In both pages of the WebRTC-alone path: resolves once `pc` has gathered its candidates (the
// descriptions go whole, not trickled).
const GATHERED = `window.gathered = (pc) => new Promise((r) => (pc.iceGatheringState === "complete" ? r()
  : pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && r())));`;

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(samples, unreadable) {
  const s = [...samples].sort((x, y) => x - y);
  return { frames: s.length, unreadable, p50: percentile(s, 50), p99: percentile(s, 99), max: s[s.length - 1] };
}

// Collects the viewer's samples for SECONDS after the warm-up.
async function collect(viewer) {
  await viewer.waitForFunction(() => window.samples.length > 0, null, { timeout: 30000 });
  await new Promise((r) => setTimeout(r, WARMUP_MS));
  await viewer.evaluate(() => { window.samples = []; window.unreadable = 0; });
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  return viewer.evaluate(() => ({ samples: window.samples, unreadable: window.unreadable }));
}

async function throughSluice(browser, r) {
  const camera = await browser.newPage();
  await camera.goto(`${r.http}/healthz`);
  await camera.evaluate(CAMERA);
  await camera.evaluate(async () => {
    const sluice = await import("/sluice.js");
    const pub = await sluice.publish("latency.cam");
    const encoder = new VideoEncoder({
      output: (chunk) => {
        const bytes = new Uint8Array(chunk.byteLength);
        chunk.copyTo(bytes);
        pub.send(bytes, { flags: chunk.type === "key" ? 0 : sluice.ITEM_DELTA });
      },
      error: (e) => console.error(String(e)),
    });
    encoder.configure({ codec: "vp8", width: 640, height: 360, bitrate: 1_500_000, framerate: 30,
      latencyMode: "realtime" });
    let n = 0;
    window.timer = setInterval(() => {
      window.paint();
      const frame = new VideoFrame(window.camera, { timestamp: n * 33333 });
      encoder.encode(frame, { keyFrame: n % 30 === 0 });
      frame.close();
      n++;
    }, 33);
  });
  const viewer = await browser.newPage();
  await viewer.goto(`${r.http}/healthz`);
  await viewer.evaluate(VIEWER);
  await viewer.evaluate(async () => {
    const sluice = await import("/sluice.js");
    const v = await sluice.watchVideo("latency.cam", { name: "latency" });
    const video = document.createElement("video");
    video.muted = true;
    video.srcObject = v.stream;
    document.body.append(video);
    await video.play();
    window.measure(video);
  });
  const got = await collect(viewer);
  await camera.evaluate(() => clearInterval(window.timer));
  await camera.close();
  await viewer.close();
  return summary(got.samples, got.unreadable);
}

async function webrtcAlone(browser, r) {
  const camera = await browser.newPage();
  await camera.goto(`${r.http}/healthz`);
  await camera.evaluate(CAMERA);
  await camera.evaluate(GATHERED);
  const viewer = await browser.newPage();
  await viewer.goto(`${r.http}/healthz`);
  await viewer.evaluate(VIEWER);
  await viewer.evaluate(GATHERED);
  const offer = await camera.evaluate(async () => {
    window.timer = setInterval(() => window.paint(), 33);
    const track = window.camera.captureStream(30).getVideoTracks()[0];
    const pc = new RTCPeerConnection();
    const t = pc.addTransceiver(track, { direction: "sendonly" });
    const vp8 = RTCRtpSender.getCapabilities("video").codecs.filter((c) => c.mimeType === "video/VP8");
    t.setCodecPreferences(vp8);
    window.pc = pc;
    await pc.setLocalDescription(await pc.createOffer());
    await window.gathered(pc);
    return pc.localDescription.sdp;
  });
  const answer = await viewer.evaluate(async (sdp) => {
    const pc = new RTCPeerConnection();
    const video = document.createElement("video");
    video.muted = true;
    document.body.append(video);
    pc.addEventListener("track", async (e) => {
      video.srcObject = new MediaStream([e.track]);
      await video.play();
      window.measure(video);
    });
    await pc.setRemoteDescription({ type: "offer", sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await window.gathered(pc);
    window.pc = pc;
    return pc.localDescription.sdp;
  }, offer);
  await camera.evaluate((sdp) => window.pc.setRemoteDescription({ type: "answer", sdp }), answer);
  const got = await collect(viewer);
  await camera.evaluate(() => clearInterval(window.timer));
  await camera.close();
  await viewer.close();
  return summary(got.samples, got.unreadable);
}

const r = await startRelay(SLUICE, { env: { SLUICE_WHEP_ICE_ADDRESSES: "127.0.0.1" } });
const browser = await launch({ webrtc: true });
try {
  const alone = await webrtcAlone(browser, r);
  const sluice = await throughSluice(browser, r);
  const f = (v) => (Number.isFinite(v) ? v.toFixed(1) : "-");
  console.log(`\nM1 glass to glass, 640x360 VP8 at 30 fps, ${SECONDS} s each (ms from painted to shown)`);
  console.log("path                                        frames  unreadable    p50     p99     max");
  for (const [name, s] of [["WebRTC alone (browser to browser)", alone],
    ["Sluice (WebSocket publish, topic, WHEP)", sluice]]) {
    console.log(`${name.padEnd(42)} ${String(s.frames).padStart(7)} ${String(s.unreadable).padStart(11)}` +
      ` ${f(s.p50).padStart(6)} ${f(s.p99).padStart(7)} ${f(s.max).padStart(7)}`);
  }
  console.log(`Sluice / WebRTC alone: p50 ${(sluice.p50 / alone.p50).toFixed(2)}x, p99 ${(sluice.p99 / alone.p99).toFixed(2)}x`);
  console.log(JSON.stringify({ bench: "M1-glass-to-glass", alone, sluice }));
} finally {
  await browser.close();
  await r.stop();
}
