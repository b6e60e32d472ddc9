/**
 * The servers the benchmark compares: ferry itself, nginx (generated config, 127.0.0.1, a free port),
 * iperf3 (the loopback ceiling), the seed's C server and client (built from `scripts/seed/` with gcc) and
 * an rsync daemon (case 8).
 * Missing tools are installed from Debian's packages with apt-get unless installing is turned off, in
 * which case the peer is skipped and the report says so.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import type { Protocol } from "../loadgen.ts";
import { freePort, have, processTree, run, start, type Started, stop, waitForPort } from "./procs.ts";

/** A path of the repository. */
export const repo = (p: string): string => fileURLToPath(new URL(`../../${p}`, import.meta.url));

/** A server under test, running. */
export interface Server {
  /** How the report names it, e.g. `nginx (2 workers, sendfile on)`. */
  name: string;
  /** The protocol its clients speak. */
  protocol: Protocol;
  /** Its port on 127.0.0.1. */
  port: number;
  /** Pids of its master and workers. */
  pids: number[];
  /** Stops it and waits for it. */
  stop(): Promise<void>;
}

/** Tools the benchmark may need and the Debian package of each. */
export const PACKAGES: Record<string, string> = {
  nginx: "nginx",
  iperf3: "iperf3",
  curl: "curl",
  strace: "strace",
  gcc: "gcc",
  openssl: "openssl",
  rsync: "rsync",
  time: "time",
};

/**
 * Makes sure the tools are there: those missing are installed with apt-get when `install` is true
 * (services are kept from starting during the install). Returns the tools available and a note per tool
 * that is not.
 */
export async function ensureTools(
  tools: string[],
  install: boolean,
  log: (line: string) => void,
): Promise<{ available: Set<string>; notes: string[] }> {
  const available = new Set<string>();
  const missing: string[] = [];
  for (const tool of tools) {
    if (await have(tool)) available.add(tool);
    else missing.push(tool);
  }
  const notes: string[] = [];
  if (missing.length > 0 && install) {
    const packages = missing.map((t) => PACKAGES[t]);
    log(`installing ${packages.join(", ")} with apt-get`);
    const policy = "/usr/sbin/policy-rc.d";
    // Debian's way to keep an installed daemon (nginx on port 80) from being started by the install.
    const addedPolicy = !(await Deno.stat(policy).catch(() => null));
    if (addedPolicy) await Deno.writeTextFile(policy, "#!/bin/sh\nexit 101\n", { mode: 0o755 });
    try {
      const env = { DEBIAN_FRONTEND: "noninteractive" };
      await run("apt-get", ["update", "-qq"], { env, allowFailure: true });
      const out = await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...packages], {
        env,
        allowFailure: true,
      });
      if (out.code !== 0) {
        log(`apt-get install failed: ${out.stderr.trim().split("\n").slice(-3).join(" / ")}`);
      }
    } catch (e) {
      log(`apt-get could not run: ${(e as Error).message}`);
    } finally {
      if (addedPolicy) await Deno.remove(policy).catch(() => {});
    }
  }
  for (const tool of missing) {
    if (await have(tool)) available.add(tool);
    else notes.push(`${tool} is not installed${install ? " (apt-get could not install it)" : ""}: skipped`);
  }
  return { available, notes };
}

/** The version line of a tool, for the report. */
export async function versionOf(tool: string): Promise<string> {
  const args: Record<string, string[]> = {
    nginx: ["-v"],
    iperf3: ["--version"],
    curl: ["--version"],
    strace: ["-V"],
    gcc: ["--version"],
    openssl: ["version"],
    rsync: ["--version"],
  };
  try {
    const out = await run(tool, args[tool] ?? ["--version"], { allowFailure: true });
    const line = (out.stdout + out.stderr).trim().split("\n")[0].replace(/^nginx version: /, "");
    // curl and openssl print their libraries on the same line: keep the program's own version.
    return tool === "curl" || tool === "openssl" ? line.split(" ").slice(0, 2).join(" ") : line;
  } catch {
    return "unknown";
  }
}

/** Options of a ferry server. */
export interface FerryOptions {
  /** Served directory (request mode). */
  root: string;
  /** A file pushed on a second, classic-mode listener. */
  push?: string;
  /** Worker processes. */
  workers: number;
  /** `--conns-per-worker`. */
  connsPerWorker: number;
  /** `--queue`. */
  queue: number;
}

/** A ferry server, plus its classic-mode port and how long it took to be ready. */
export interface FerryServer extends Server {
  /** The classic-mode listener's port (when `push` was given). */
  classicPort: number;
  /** Seconds from spawn to "ready with N workers". */
  readySeconds: number;
}

/** Starts `server.ts` on 127.0.0.1 with free ports and waits until it is ready. */
export async function startFerry(o: FerryOptions): Promise<FerryServer> {
  const args = [
    "run",
    "--allow-all",
    repo("server.ts"),
    "--listen",
    "127.0.0.1:0",
    "--root",
    o.root,
    "--workers",
    String(o.workers),
    "--conns-per-worker",
    String(o.connsPerWorker),
    "--queue",
    String(o.queue),
    "--grace",
    "2",
    // Like nginx's access_log off: a line per request, read by this script through a pipe, cost ferry
    // about a fifth of its small-file throughput in a quick check.
    "--request-log",
    "off",
  ];
  if (o.push) args.push("--push-listen", "127.0.0.1:0", "--push", o.push);
  const t0 = performance.now();
  const p = start(Deno.execPath(), args);
  await p.waitFor(/ready with \d+ workers/);
  const readySeconds = (performance.now() - t0) / 1000;
  const ports = p.lines.filter((l) => l.includes("listening on")).map((l) => Number(/:(\d+) \(/.exec(l)![1]));
  return {
    name: `ferry (${o.workers} workers)`,
    protocol: "ferry",
    port: ports[0],
    classicPort: ports[1] ?? 0,
    pids: processTree(p.process.pid),
    readySeconds,
    stop: () => stop(p),
  };
}

/** Options of an nginx server. */
export interface NginxOptions {
  /** The document root. */
  root: string;
  /** A directory for the config, pid file, error log and temp paths. */
  dir: string;
  /** `worker_processes`: a number or "auto". */
  workers: number | "auto";
  /** `sendfile on` or `off`. */
  sendfile: boolean;
  /**
   * `tcp_nopush on` (TCP_CORK while a response goes out with sendfile) or `off`, nginx's default. Neither
   * is nginx's best everywhere: on this loopback, `on` halved one large stream and a 64-client fan-out,
   * while small files were a little faster with it (scripts/bench/tried.md). Only matters with sendfile.
   */
  nopush: boolean;
  /** `worker_connections`. */
  connections: number;
}

/**
 * The nginx config the benchmark generates: static files from `root`, no access log, long keep-alive, open
 * files cached.
 */
export function nginxConfig(o: NginxOptions, port: number): string {
  return `# generated by scripts/bench (ferry's benchmark)
daemon off;
master_process on;
user root;
worker_processes ${o.workers};
worker_rlimit_nofile 20000;
pid ${o.dir}/nginx.pid;
error_log ${o.dir}/error.log warn;
events {
    worker_connections ${o.connections};
    use epoll;
}
http {
    access_log off;
    default_type application/octet-stream;
    sendfile ${o.sendfile ? "on" : "off"};
    tcp_nopush ${o.nopush ? "on" : "off"};
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    # ferry answers a small file it served before from memory after one stat: nginx's nearest
    # equivalent keeps files open with their stat results.
    open_file_cache max=10000 inactive=60s;
    send_timeout 120s;
    client_body_temp_path ${o.dir}/body;
    proxy_temp_path ${o.dir}/proxy;
    fastcgi_temp_path ${o.dir}/fastcgi;
    uwsgi_temp_path ${o.dir}/uwsgi;
    scgi_temp_path ${o.dir}/scgi;
    server {
        listen 127.0.0.1:${port} backlog=511;
        root ${o.root};
        location / { }
    }
}
`;
}

/** How the report names an nginx server, e.g. `nginx (auto = 2 workers, sendfile on, tcp_nopush on)`. */
export function nginxName(o: Pick<NginxOptions, "workers" | "sendfile" | "nopush">): string {
  const workers = o.workers === "auto"
    ? `auto = ${navigator.hardwareConcurrency} workers`
    : `${o.workers} worker${o.workers > 1 ? "s" : ""}`;
  return `nginx (${workers}, sendfile ${o.sendfile ? (o.nopush ? "on, tcp_nopush on" : "on") : "off"})`;
}

/** Starts nginx with a generated config on a free port and waits until it accepts. */
export async function startNginx(o: NginxOptions): Promise<Server> {
  await Deno.mkdir(o.dir, { recursive: true });
  const port = freePort();
  const conf = `${o.dir}/nginx.conf`;
  await Deno.writeTextFile(conf, nginxConfig(o, port));
  const p = start("nginx", ["-c", conf, "-p", o.dir]);
  await waitForPort(port);
  // The workers are forked after the port is open: wait for them to appear.
  const want = o.workers === "auto" ? navigator.hardwareConcurrency : o.workers;
  let pids = processTree(p.process.pid);
  for (let i = 0; i < 100 && pids.length < want + 1; i++) {
    await new Promise((r) => setTimeout(r, 20));
    pids = processTree(p.process.pid);
  }
  return {
    name: nginxName(o),
    protocol: "http",
    port,
    pids,
    stop: () => stop(p),
  };
}

/** Runs iperf3 once (its server is started for this one test): 1 MiB writes, `bytes` bytes. */
export async function iperf3(bytes: number): Promise<{ gbps: number }> {
  const port = freePort();
  const server: Started = start("iperf3", [
    "-s",
    "-1",
    "--forceflush",
    "-p",
    String(port),
    "-B",
    "127.0.0.1",
  ]);
  try {
    await server.waitFor(/Server listening/);
    const out = await run("iperf3", [
      "-c",
      "127.0.0.1",
      "-p",
      String(port),
      "-n",
      String(bytes),
      "-l",
      "1M",
      "-J",
    ]);
    const json = JSON.parse(out.stdout) as { end: { sum_received: { bits_per_second: number } } };
    return { gbps: json.end.sum_received.bits_per_second / 8 / 1e9 };
  } finally {
    await stop(server);
  }
}

/** The seed's C server and client, built into `dir`. */
export interface Seed {
  /** The server binary. */
  server: string;
  /** The client binary. */
  client: string;
}

/** Builds the seed's server and client with gcc -O2. */
export async function buildSeed(dir: string): Promise<Seed> {
  const built = { server: `${dir}/seed_server`, client: `${dir}/seed_client` };
  await run("gcc", ["-O2", "-o", built.server, repo("scripts/seed/seed_server.c")]);
  await run("gcc", ["-O2", "-o", built.client, repo("scripts/seed/seed_client.c")]);
  return built;
}

/** Starts the seed's C server (classic mode, `children` processes) pushing `file`. */
export async function startSeedServer(seed: Seed, file: string, children: number): Promise<Server> {
  const p = start(seed.server, ["127.0.0.1", "0", String(children), file]);
  const line = await p.waitFor(/listening on/);
  return {
    name: `seed C server (${children} children)`,
    protocol: "ferry",
    port: Number(/:(\d+)$/.exec(line)![1]),
    pids: processTree(p.process.pid),
    stop: () => stop(p),
  };
}

/** An rsync daemon serving one read-only module, `trees`. */
export interface RsyncDaemon {
  /** Its port on 127.0.0.1. */
  port: number;
  /** The daemon's own pid: its children (one per connection) are reaped into its CPU counts. */
  pid: number;
  /** Stops it and waits for it. */
  stop(): Promise<void>;
}

/**
 * Starts `rsync --daemon` in the foreground on a free port of 127.0.0.1, serving `root` as the module
 * `trees` (read only, as root so every file is readable, no chroot, no reverse DNS lookups, no limit on
 * connections), and waits until it accepts.
 */
export async function startRsyncDaemon(root: string, dir: string): Promise<RsyncDaemon> {
  await Deno.mkdir(dir, { recursive: true });
  const port = freePort();
  const conf = `${dir}/rsyncd.conf`;
  await Deno.writeTextFile(
    conf,
    `# generated by scripts/bench (ferry's benchmark)
pid file = ${dir}/rsyncd.pid
log file = ${dir}/rsyncd.log
use chroot = no
reverse lookup = no
max connections = 0
[trees]
    path = ${root}
    read only = yes
    uid = root
    gid = root
`,
  );
  const p = start("rsync", [
    "--daemon",
    "--no-detach",
    `--config=${conf}`,
    "--address=127.0.0.1",
    `--port=${port}`,
  ]);
  await waitForPort(port);
  return { port, pid: p.process.pid, stop: () => stop(p) };
}
