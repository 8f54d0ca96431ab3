// Debian's Chromium, headless, driven by playwright-core: launched one way for the browser
// tests and the browser benchmarks (SLUICE_CHROMIUM: another executable).
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.SLUICE_CHROMIUM || "/usr/bin/chromium";

// --no-sandbox: CI runs as root, where Chromium's sandbox cannot start. `webrtc`: WebRTC on
// loopback — Chromium offers loopback candidates only when allowed, and names its host
// candidates by mDNS unless told not to — and video that plays without a user's gesture.
// `args`: more flags.
export function launch({ webrtc = false, args = [] } = {}) {
  const flags = ["--no-sandbox", ...args];
  if (webrtc) {
    flags.push("--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required");
  }
  return chromium.launch({ executablePath: CHROMIUM, args: flags });
}
