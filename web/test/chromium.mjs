// Debian's Chromium, headless, driven by playwright-core: launched one way for the browser
// tests and the browser benchmarks (SLUICE_CHROMIUM: another executable).
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.SLUICE_CHROMIUM || "/usr/bin/chromium";

// --no-sandbox: CI runs as root, where Chromium's sandbox cannot start. `webrtc`: WebRTC on
// loopback — Chromium offers loopback candidates only when allowed, and names its host
// candidates by mDNS unless told not to — and video that plays without a user's gesture.
// `args`: more flags.
function flags({ webrtc = false, args = [] }) {
  const all = ["--no-sandbox", ...args];
  if (webrtc) {
    all.push("--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required");
  }
  return all;
}

export function launch(options = {}) {
  return chromium.launch({ executablePath: CHROMIUM, args: flags(options) });
}

// The same browser as a process of its own that a test can kill (`server.kill()`: SIGKILL, as
// a crash or a closed laptop), with `browser` connected to it.
export async function launchKillable(options = {}) {
  const server = await chromium.launchServer({ executablePath: CHROMIUM, args: flags(options) });
  return { server, browser: await chromium.connect(server.wsEndpoint()) };
}
