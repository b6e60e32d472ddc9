/**
 * Files of every size that matters (empty, one byte, around the classic 1000-byte frame, a page, and
 * 100 MiB) go through a real server to the real client in both modes, over IPv4 and IPv6, and arrive
 * byte-identical; classic mode is also received by a client written from the seed's wire format.
 */

import assert from "node:assert/strict";
import { basename } from "node:path";
import { CLASSIC_CHUNK } from "../framing.ts";
import { makeFile, repoPath, runClient, sha256File, startServer, tempDir } from "./helpers.ts";
import type { SeedResult } from "./seed_client.ts";

const MiB = 1024 * 1024;
const SIZES = [0, 1, 999, 1000, 1001, 4096, 100 * MiB];
const SEED_SIZES = [0, 1, 999, 1000, 1001, 3 * MiB + 333];

/** The two loopback families: the address a client dials and the peer text the server logs. */
const FAMILIES = [
  { name: "IPv4", host: "127.0.0.1", listen: "127.0.0.1:0", peer: "127.0.0.1:" },
  { name: "IPv6", host: "[::1]", listen: "[::1]:0", peer: "[::1]:" },
] as const;

interface Source {
  path: string;
  name: string;
  size: number;
  sha256: string;
}

async function makeSources(dir: string, sizes: number[]): Promise<Source[]> {
  const sources: Source[] = [];
  for (const size of sizes) {
    const name = `file-${size}.bin`;
    const path = await makeFile(dir, name, size);
    sources.push({ path, name, size, sha256: await sha256File(path) });
  }
  return sources;
}

/** Asserts that `path` holds exactly the source's bytes, then removes it (the 100 MiB copies add up). */
async function assertSameFile(path: string, source: Source, how: string): Promise<void> {
  assert.equal((await Deno.stat(path)).size, source.size, `${how}: size of ${source.name}`);
  assert.equal(await sha256File(path), source.sha256, `${how}: SHA-256 of ${source.name}`);
  await Deno.remove(path);
}

/** Asserts that the log of a stopped server has a line saying the request from `peer` for `label` was served. */
function assertServedFrom(log: string[], peer: string, label: string): void {
  const quote = (text: string) => text.replaceAll(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const line = new RegExp(`peer=${quote(peer)}\\d+ .*request=${quote(label)} .*result=ok$`);
  assert.ok(log.some((l) => line.test(l)), `no log line for ${label} from ${peer}:\n${log.join("\n")}`);
}

/** Runs the seed reference client (tests/seed_client.ts) as its own process. */
async function runSeedClient(
  address: string,
  dir: string,
): Promise<SeedResult & { code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", repoPath("tests/seed_client.ts"), address, dir],
    stdin: "null",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  if (out.code !== 0) {
    return { code: out.code, stderr, name: "", bytes: 0, frames: 0, largestFrame: 0, shortFrames: 0 };
  }
  return { code: 0, stderr, ...(JSON.parse(new TextDecoder().decode(out.stdout)) as SeedResult) };
}

Deno.test("files of 0, 1, 999, 1000, 1001, 4096 bytes and 100 MiB arrive byte-identical in both modes over IPv4 and IPv6", async (t) => {
  await using src = await tempDir();
  await using out = await tempDir();
  const sources = await makeSources(src.path, SIZES);
  assert.ok(sources.at(-1)!.size >= 100 * MiB);

  await t.step("request mode: `get` over IPv4 and IPv6 from one server with both listeners", async () => {
    const server = await startServer([
      ...FAMILIES.flatMap((f) => ["--listen", f.listen]),
      "--root",
      src.path,
      "--workers",
      "2",
    ]);
    try {
      assert.equal(server.ports.length, 2);
      for (const source of sources) {
        // Both families at once: the two transfers run side by side on the two workers.
        await Promise.all(FAMILIES.map(async (family, i) => {
          const target = `${out.path}/get-${family.name}-${source.name}`;
          const r = await runClient(["get", `${family.host}:${server.ports[i]}`, source.name, "-o", target]);
          assert.equal(r.code, 0, `get ${source.name} over ${family.name}: ${r.stderr}`);
          await assertSameFile(target, source, `get over ${family.name}`);
        }));
      }
    } finally {
      assert.equal((await server.stop()).code, 0);
    }
    // Each request came from its family's loopback address (the log is complete once the server stopped).
    for (const source of sources) {
      for (const family of FAMILIES) assertServedFrom(server.log, family.peer, `GET "${source.name}"`);
    }
  });

  await t.step(
    "classic mode: `pull` over IPv4 and IPv6 receives each pushed file under its base name",
    async () => {
      // Classic mode pushes one file per server: one server per file, listening on both families.
      for (const source of sources) {
        const server = await startServer([
          ...FAMILIES.flatMap((f) => ["--listen", f.listen]),
          "--push",
          source.path,
          "--workers",
          "2",
        ]);
        try {
          await Promise.all(FAMILIES.map(async (family, i) => {
            const dir = `${out.path}/pull-${family.name}`;
            await Deno.mkdir(dir, { recursive: true });
            const r = await runClient(["pull", `${family.host}:${server.ports[i]}`, "-o", dir]);
            assert.equal(r.code, 0, `pull ${source.name} over ${family.name}: ${r.stderr}`);
            assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [source.name]);
            await assertSameFile(`${dir}/${source.name}`, source, `pull over ${family.name}`);
          }));
        } finally {
          assert.equal((await server.stop()).code, 0);
        }
        for (const family of FAMILIES) assertServedFrom(server.log, family.peer, `PUSH ${source.name}`);
      }
    },
  );
});

Deno.test("classic mode: a client written from the seed's wire format receives identical files and the base name", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  const sources = await makeSources(src.path, SEED_SIZES);
  for (const source of sources) {
    const server = await startServer([
      ...FAMILIES.flatMap((f) => ["--listen", f.listen]),
      "--push",
      source.path,
      "--workers",
      "1",
    ]);
    try {
      for (const [i, family] of FAMILIES.entries()) {
        const dir = `${out.path}/${family.name}-${source.size}`;
        await Deno.mkdir(dir);
        const r = await runSeedClient(`${family.host}:${server.ports[i]}`, dir);
        const how = `seed client, ${source.name} over ${family.name}`;
        assert.equal(r.code, 0, `${how}: ${r.stderr}`);
        assert.equal(r.name, basename(source.path), `${how}: the name frame is the base name`);
        assert.equal(r.bytes, source.size, how);
        // The seed's framing: full 1000-byte frames, only the last one shorter.
        assert.equal(r.frames, Math.ceil(source.size / CLASSIC_CHUNK), how);
        assert.ok(r.largestFrame <= CLASSIC_CHUNK, how);
        assert.equal(r.shortFrames, source.size % CLASSIC_CHUNK === 0 ? 0 : 1, how);
        await assertSameFile(`${dir}/${r.name}`, source, how);
      }
    } finally {
      assert.equal((await server.stop()).code, 0);
    }
  }
});
