// What the dashboard costs the relay: the relay's CPU time (from /proc) over a window, idle and
// while a publisher streams 1 KiB items to 3 subscribers as fast as they go, with 0 and then
// 5 dashboards open (headless Chromium, each following /v1/ws/stats every 500 ms).
//   make bench-dashboard   (or: SLUICE_BINARY=build/src/cli/sluice node web/bench/dashboard_cost.mjs)
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { launch } from "../test/chromium.mjs";

const SLUICE = process.env.SLUICE_BINARY || "build/src/cli/sluice";
const WINDOW_MS = Number(process.env.WINDOW_MS || 10000);
const TICK = 100;  // clock ticks per second (sysconf(_SC_CLK_TCK) on Linux)

function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICK;  // utime + stime
}

async function published(http) {
  const stats = await (await fetch(`http://${http}/v1/stats`)).json();
  return stats.topics.reduce((n, t) => n + t.published, 0);
}

// The relay's CPU (% of one core) over the window, and per 1000 items published in it.
async function measure(pid, http) {
  const before = cpuSeconds(pid);
  const items = await published(http);
  await new Promise((r) => setTimeout(r, WINDOW_MS));
  const cpu = cpuSeconds(pid) - before;
  const n = (await published(http)) - items;
  return { percent: (cpu / (WINDOW_MS / 1000)) * 100, perK: n > 0 ? (cpu * 1e6) / (n / 1000) : 0, n };
}

const relay = spawn(SLUICE, ["serve"], {
  env: { ...process.env, SLUICE_GRPC_PORT: "0", SLUICE_HTTP_PORT: "0", SLUICE_LOG_LEVEL: "warn" },
  stdio: ["ignore", "pipe", "inherit"],
});
const [line] = await once(createInterface({ input: relay.stdout }), "line");
const { grpc, http, dashboard } = JSON.parse(line);

const load = [];
function startLoad() {
  for (let i = 0; i < 3; i++) {
    load.push(spawn(SLUICE, ["sub", "--target", grpc, "--topic", "load", "--name", `s${i}`],
      { stdio: "ignore" }));
  }
  load.push(spawn(SLUICE, ["pub", "--target", grpc, "--topic", "load", "--size", "1024",
    "--count", "100000000", "--quiet"], { stdio: "ignore" }));
}
function stopLoad() {
  for (const p of load.splice(0)) p.kill("SIGINT");
}

const browser = await launch();
const rows = [];
for (const dashboards of [0, 5]) {
  const pages = [];
  for (let i = 0; i < dashboards; i++) {
    const p = await browser.newPage();
    await p.goto(dashboard);
    await p.waitForSelector("#state[data-state=up]");
    pages.push(p);
  }
  const idle = await measure(relay.pid, http);
  startLoad();
  await new Promise((r) => setTimeout(r, 1000));
  const loaded = await measure(relay.pid, http);
  stopLoad();
  await new Promise((r) => setTimeout(r, 1000));
  rows.push({ dashboards, idle, loaded });
  for (const p of pages) await p.close();
}
await browser.close();
relay.kill("SIGTERM");
console.log(`The relay's CPU over ${WINDOW_MS / 1000} s windows (% of one core; under load also CPU µs per 1000 items):`);
console.log("  dashboards   idle      1 KiB stream to 3 subscribers");
for (const r of rows) {
  console.log(`  ${String(r.dashboards).padStart(10)}   ${r.idle.percent.toFixed(2).padStart(5)} %   ` +
    `${r.loaded.percent.toFixed(1).padStart(5)} %, ${r.loaded.n} items, ${r.loaded.perK.toFixed(0)} µs per 1000`);
}
console.log(`  5 dashboards: idle ${(rows[1].idle.percent - rows[0].idle.percent).toFixed(2)} points more; ` +
  `under load ${(rows[1].loaded.perK / rows[0].loaded.perK).toFixed(2)}x the CPU per item ` +
  "(the browsers share the machine's 2 cores with the relay and its clients)");
