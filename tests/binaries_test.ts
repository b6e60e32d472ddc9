/**
 * The programs as they are shipped: one file per program made by `deno bundle` (run with `deno run`),
 * and single binaries made by `deno compile` (when a `denort` runtime is at hand; else the test says it
 * skipped and why). Each is built into a folder of its own, away from the sources, and a file is fetched
 * through the built server and client end to end; the server's workers are the built program itself.
 */
import assert from "node:assert/strict";
import { childPids, repoPath, tempDir, watchLog } from "./helpers.ts";

/** Runs a build step; fails the test with its output if it fails. */
async function build(args: string[]): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: repoPath("."), stdin: "null" }).output();
  assert.ok(out.success, `deno ${args.join(" ")}:\n${new TextDecoder().decode(out.stderr)}`);
}

/**
 * Starts the server `server` (a command line) on a free port serving demo/, fetches hello.txt with the
 * client `client` into `dir`, checks the bytes and that the workers run `expectWorker`, then stops it.
 */
async function serveEndToEnd(server: string[], client: string[], dir: string, expectWorker: string) {
  const process = new Deno.Command(server[0], {
    args: [...server.slice(1), "--listen", "127.0.0.1:0", "--root", repoPath("demo"), "--workers", "2"],
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const { log, waitForLog, ended } = watchLog(process.stderr);
  try {
    assert.notEqual(await waitForLog(/ready with 2 workers/), "", log.join("\n"));
    const port = Number(/:(\d+) \(request mode/.exec(log.find((l) => l.includes("listening on"))!)![1]);
    for (const pid of await childPids(process.pid)) {
      const cmdline = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
      const worker = cmdline.includes(expectWorker) && cmdline.includes("__ferry_worker");
      assert.ok(worker, `a worker runs the built program: ${cmdline.join(" ")}`);
    }
    const out = await new Deno.Command(client[0], {
      args: [...client.slice(1), "get", `127.0.0.1:${port}`, "hello.txt", "-q"],
      cwd: dir,
      stdin: "null",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(
      await Deno.readTextFile(`${dir}/hello.txt`),
      await Deno.readTextFile(repoPath("demo/hello.txt")),
    );
  } finally {
    process.kill("SIGTERM");
    assert.equal((await process.status).code, 0);
    await ended;
  }
}

Deno.test("deno bundle: one file per program, served end to end with deno run, the workers from the bundle", async () => {
  await using dir = await tempDir();
  for (const [entry, out] of [["server.ts", "ferry-server.js"], ["client.ts", "ferry.js"]]) {
    await build(["bundle", "--platform=deno", "--output", `${dir.path}/${out}`, entry]);
  }
  const run = [Deno.execPath(), "run", "--allow-all"];
  await serveEndToEnd(
    [...run, `${dir.path}/ferry-server.js`],
    [...run, `${dir.path}/ferry.js`],
    dir.path,
    `${dir.path}/ferry-server.js`,
  );
});

/** Where `deno compile` finds its runtime without a download, if anywhere; else why not. */
async function denortAvailable(): Promise<string | null> {
  const explicit = Deno.env.get("DENORT_BIN");
  if (explicit) {
    return (await Deno.stat(explicit).then(() => true, () => false))
      ? null
      : `DENORT_BIN=${explicit} does not exist`;
  }
  const denoDir = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;
  const zip = `${denoDir}/dl/release/v${Deno.version.deno}/denort-x86_64-unknown-linux-gnu.zip`;
  if (await Deno.stat(zip).then(() => true, () => false)) return null;
  return `no denort runtime: DENORT_BIN is not set and ${zip} is not cached (deno compile would download it)`;
}

Deno.test("deno compile: dist/ferry-server and dist/ferry as single binaries, served end to end", async () => {
  const missing = await denortAvailable();
  if (missing !== null) {
    console.log(`skipped: deno compile: ${missing}`);
    return;
  }
  await using dir = await tempDir();
  for (const [entry, out] of [["server.ts", "ferry-server"], ["client.ts", "ferry"]]) {
    await build(["compile", "--allow-all", "--output", `${dir.path}/${out}`, entry]);
  }
  await serveEndToEnd(
    [`${dir.path}/ferry-server`],
    [`${dir.path}/ferry`],
    dir.path,
    `${dir.path}/ferry-server`,
  );
});
