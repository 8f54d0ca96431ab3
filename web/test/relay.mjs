// The relay for the browser tests: `sluice serve` on 127.0.0.1 with ephemeral or chosen ports.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

// A relay: `sluice serve` (the executable `sluice`) with `env` and `args`, and `config` as its
// configuration file; resolves with its addresses once it listens.
export async function relay(sluice, { env = {}, args = [], config = null, httpPort = 0 } = {}) {
  const extra = [];
  if (config) {
    const dir = mkdtempSync(join(tmpdir(), "sluice-browser-"));
    writeFileSync(join(dir, "relay.toml"), config);
    extra.push("--config", join(dir, "relay.toml"));
  }
  const child = spawn(sluice, ["serve", ...extra, ...args], {
    env: { ...process.env, SLUICE_GRPC_PORT: "0", SLUICE_HTTP_PORT: String(httpPort), ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const [line] = await once(lines, "line");
  const listening = JSON.parse(line);
  assert.equal(listening.event, "listening", line);
  return {
    child,
    grpc: listening.grpc,
    http: `http://${listening.http}`,
    dashboard: listening.dashboard,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await once(child, "exit");
    },
  };
}

