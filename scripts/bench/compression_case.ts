/**
 * Case 9 of the benchmark: when compression wins. `client.ts get` of a compressible file (text like a
 * server's log) and of an incompressible one, with and without `--compress`, through a counting relay
 * limited to 100 Mbit/s each way (a WAN link) and through the same relay without a limit (loopback, where
 * sendfile is the fast path). Per row: wall time, bytes on the wire (counted at the relay), and the CPU of
 * the server and the client.
 *
 * @module
 */

import { repo, startFerry } from "./peers.ts";
import { run } from "./procs.ts";
import { startRelay } from "./relay.ts";
import { bytesLabel, int, medianRange, num, type Section, summarize, table } from "./report.ts";
import { cpuSeconds } from "./procs.ts";

/** What case 9 measures in each profile. */
const COMPRESSION_PROFILES = {
  full: { fileBytes: 64 * 2 ** 20, runs: 3 },
  quick: { fileBytes: 16 * 2 ** 20, runs: 1 },
  tiny: { fileBytes: 2 ** 20, runs: 1 },
} as const;

/** What case 9 needs from the benchmark. */
export interface CompressionBench {
  /** The profile's name. */
  profile: keyof typeof COMPRESSION_PROFILES;
  /** A temporary directory on the local disk. */
  root: string;
  /** Progress on stderr. */
  log: (line: string) => void;
}

/** The slow link's rate: 100 Mbit/s. */
const LINK_BYTES_PER_SECOND = 100e6 / 8;

/**
 * `size` bytes of text like a web server's log: timestamps, levels, request ids, addresses, paths, status
 * codes and sizes, some of them random. zstd at level 1 keeps about a fifth of it, like real logs.
 */
function logLike(size: number): Uint8Array {
  const out = new Uint8Array(size);
  const encoder = new TextEncoder();
  const levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"];
  const paths = [
    "/api/v1/users/",
    "/static/app.js",
    "/healthz",
    "/api/v1/orders/",
    "/login",
    "/api/v2/search?q=",
  ];
  let state = 12345;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  let t = Date.UTC(2026, 11, 5);
  for (let at = 0, i = 0; at < size; i++) {
    t += next() % 40;
    const path = paths[next() % paths.length];
    const line =
      `${new Date(t).toISOString()} ${levels[next() % levels.length]} req=${next().toString(16)} ` +
      `ip=10.${next() % 256}.${next() % 256}.${next() % 256} ${path}${
        path.endsWith("/") ? next() % 10000 : ""
      } ` +
      `status=${next() % 23 === 0 ? 500 : 200} bytes=${next() % 200000} ms=${(next() % 3000) / 10}\n`;
    at += encoder.encodeInto(line, out.subarray(at)).written;
  }
  return out;
}

/** `size` random bytes: nothing to compress, as in an archive or a video. */
function randomBytes(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += 65536) {
    crypto.getRandomValues(out.subarray(at, Math.min(size, at + 65536)));
  }
  return out;
}

/** CPU seconds of the children this process has reaped (cutime + cstime): a client run, once it has exited. */
function reapedChildrenCpu(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

/** One measured `get`. */
interface Measured {
  wall: number;
  down: number;
  serverCpu: number;
  clientCpu: number;
}

/** Runs case 9 and returns its report section. */
export async function case9(b: CompressionBench): Promise<Section> {
  const p = COMPRESSION_PROFILES[b.profile];
  const dir = `${b.root}/compression`;
  const served = `${dir}/served`;
  await Deno.mkdir(served, { recursive: true });
  b.log(`case 9: writing a log-like and a random file of ${bytesLabel(p.fileBytes)}`);
  const files = [
    { name: "app.log", what: "log-like text", data: logLike(p.fileBytes) },
    { name: "random.bin", what: "random bytes", data: randomBytes(p.fileBytes) },
  ];
  for (const f of files) await Deno.writeFile(`${served}/${f.name}`, f.data);
  const ferry = await startFerry({ root: served, workers: 2, connsPerWorker: 64, queue: 1024 });
  const links = [
    { name: "100 Mbit/s", relay: startRelay(ferry.port, { bytesPerSecond: LINK_BYTES_PER_SECOND }) },
    { name: "no limit", relay: startRelay(ferry.port) },
  ];
  const results = new Map<string, Measured[]>();
  const variants = links.flatMap((link) =>
    files.flatMap((file) =>
      [false, true].map((compress) => ({
        key: `${link.name}|${file.name}|${compress}`,
        link,
        file,
        compress,
      }))
    )
  );
  const out = `${dir}/out`;
  try {
    for (let r = -1; r < p.runs; r++) { // run -1 warms up (page cache, the server's hashes)
      for (const v of variants) {
        b.log(
          `case 9: run ${r + 2}/${p.runs + 1}: ${v.link.name}, ${v.file.name}${
            v.compress ? ", --compress" : ""
          }`,
        );
        await Deno.remove(out).catch(() => {});
        v.link.relay.reset();
        const serverBefore = cpuSeconds(ferry.pids);
        const clientBefore = reapedChildrenCpu();
        const args = [
          "run",
          "--allow-all",
          repo("client.ts"),
          "get",
          `127.0.0.1:${v.link.relay.port}`,
          v.file.name,
        ];
        const done = await run(Deno.execPath(), [
          ...args,
          "-o",
          out,
          "-q",
          ...(v.compress ? ["--compress"] : []),
        ]);
        await v.link.relay.idle();
        const size = (await Deno.stat(out)).size;
        if (size !== v.file.data.byteLength) {
          throw new Error(`case 9: ${v.file.name} arrived with ${size} bytes`);
        }
        if (r < 0) continue;
        results.set(v.key, [...results.get(v.key) ?? [], {
          wall: done.seconds,
          down: v.link.relay.bytes.down,
          serverCpu: cpuSeconds(ferry.pids) - serverBefore,
          clientCpu: reapedChildrenCpu() - clientBefore,
        }]);
      }
    }
  } finally {
    for (const link of links) await link.relay.close();
    await ferry.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  const rows: string[][] = [];
  const medianWall = (key: string) => summarize(results.get(key)!.map((m) => m.wall)).median;
  for (const v of variants) {
    const ms = results.get(v.key)!;
    const wall = summarize(ms.map((m) => m.wall));
    const plain = `${v.link.name}|${v.file.name}|false`;
    rows.push([
      v.link.name,
      `${v.file.what}${v.compress ? ", --compress" : ""}`,
      medianRange(wall),
      num(v.file.data.byteLength / wall.median / 1e6, 1),
      int(summarize(ms.map((m) => m.down)).median),
      num(summarize(ms.map((m) => m.down)).median / v.file.data.byteLength, 3),
      num(summarize(ms.map((m) => m.serverCpu)).median),
      num(summarize(ms.map((m) => m.clientCpu)).median),
      v.compress ? `${num(medianWall(plain) / wall.median)}x` : "",
    ]);
  }
  const key = (link: string, file: string, compress: boolean) => `${link}|${file}|${compress}`;
  const speedup = (link: string) =>
    num(medianWall(key(link, "app.log", false)) / medianWall(key(link, "app.log", true)));
  return {
    title: "9. Compression: `get --compress` over a 100 Mbit/s link and over loopback",
    body: [
      `One \`client.ts get\` of a ${
        bytesLabel(p.fileBytes)
      } file, with and without \`--compress\`, through a`,
      "counting relay on 127.0.0.1 that carries at most 100 Mbit/s each way (scripts/bench/relay.ts), and through",
      'the same relay without a limit ("no limit": loopback, bounded by the relay\'s own copying). The log-like',
      "file is generated text (timestamps, request ids, addresses,",
      "paths, sizes); the random one stands for an archive. Wall time is the client process's, start-up",
      "included; bytes are those the relay carried from the server to the client; CPU is user + system seconds",
      `of the server (2 workers) and of the client. ${p.runs} runs after a warm-up, variants alternating.`,
      "",
      ...table(
        [
          "link",
          "file",
          "wall s: median (min-max)",
          "MB/s of file",
          "bytes on the wire",
          "wire ÷ file",
          "server CPU s",
          "client CPU s",
          "faster than without",
        ],
        rows,
        ["l", "l", "r", "r", "r", "r", "r", "r", "r"],
      ),
      "",
      `**Compression: ${speedup("100 Mbit/s")}x as fast for log-like text over 100 Mbit/s, ` +
      `${
        speedup("no limit")
      }x without a limit (loopback)** (the random file is sent raw whether offered or not).`,
      "",
    ],
  };
}
