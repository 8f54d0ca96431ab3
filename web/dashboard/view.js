// The viewer page (/view/{topic}): plays a topic's video over WebRTC (WHEP, through the
// JavaScript client's watchVideo) and shows beside it what the browser decodes (getStats) and
// what the relay counts for this viewer (/v1/ws/stats). See docs/media.md.
import { watchStats, watchVideo } from "/sluice.js";
import { pageToken } from "/token.js";

const $ = (id) => document.getElementById(id);
const topic = decodeURIComponent(location.pathname.replace(/^\/view\//, ""));
const name = "page-" + Math.random().toString(16).slice(2, 8);
$("topic").textContent = topic;
document.title = `Sluice — ${topic}`;

const tokenInput = $("token");
pageToken(tokenInput, () => location.reload());

function setState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
  $("state").className = "state " + (state === "playing" ? "up" : "down");
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

let viewer = null;
let last = null;  // the previous inbound-rtp report, for frames/s

async function start() {
  setState("connecting", "connecting…");
  for (;;) {
    try {
      viewer = await watchVideo(topic, { token: tokenInput.value || undefined, name });
      break;
    } catch (e) {
      // A topic nobody publishes to yet (404), or one whose camera sends no keyframe yet (504):
      // the page waits for it, as a player waits for a stream, asking again every second.
      if (e.code === 404 || e.code === 504) {
        setState("waiting", "waiting for the topic to be published…");
        $("error").hidden = true;
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      setState("refused", "refused");
      showError(e.message);
      return;
    }
  }
  $("error").hidden = true;
  $("video").srcObject = viewer.stream;
  window.sluiceViewer = viewer;  // (for the browser tests and the console)
  viewer.pc.addEventListener("connectionstatechange", () => {
    const s = viewer.pc.connectionState;
    if (s === "connected") setState("playing", "playing");
    else if (s === "failed" || s === "closed") setState(s, s);
  });
  setInterval(showWebrtcStats, 1000);
}

async function showWebrtcStats() {
  const report = await viewer.pc.getStats();
  let inbound = null;
  const codecs = new Map();
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") inbound = r;
    if (r.type === "codec") codecs.set(r.id, r.mimeType);
  });
  if (!inbound) return;
  $("codec").textContent = codecs.get(inbound.codecId) || "–";
  $("size").textContent = inbound.frameWidth ? `${inbound.frameWidth}×${inbound.frameHeight}` : "–";
  $("frames-decoded").textContent = String(inbound.framesDecoded ?? 0);
  $("frames-dropped").textContent = String(inbound.framesDropped ?? 0);
  $("freezes").textContent = String(inbound.freezeCount ?? 0);
  $("packets-lost").textContent = String(inbound.packetsLost ?? 0);
  $("plis").textContent = String(inbound.pliCount ?? 0);
  if (last) {
    const seconds = (inbound.timestamp - last.timestamp) / 1000;
    const fps = seconds > 0 ? ((inbound.framesDecoded ?? 0) - (last.framesDecoded ?? 0)) / seconds : 0;
    $("fps").textContent = fps.toFixed(1);
  }
  last = inbound;
}

// The relay's count for this viewer: its subscriber row in the topic's stats.
watchStats((snapshot) => {
  const t = snapshot.topics.find((x) => x.name === topic);
  const me = t && (t.subscribers || []).find((s) => s.name === name);
  if (!me) return;
  $("relay-received").textContent = String(me.received ?? "–");
  $("relay-lost").textContent = String(me.lost ?? 0);
  $("relay-skipped").textContent = String(me.until_keyframe ?? 0);
  $("relay-lag").textContent = String(me.lag ?? "–");
}, { periodMs: 1000, token: tokenInput.value || undefined });

window.addEventListener("pagehide", () => { if (viewer) viewer.close(); });
start();
