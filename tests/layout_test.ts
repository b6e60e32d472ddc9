/**
 * The layout is the architecture: each process's code sits in its own folder, and what a process loads
 * is read from Deno's own module graph, so a stray import fails here rather than in a reader's head.
 *
 * @module
 */

import assert from "node:assert/strict";
import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { repoPath } from "./helpers.ts";

/** The repository files (relative paths) that `entry` loads, read from `deno info --json`. */
async function modulesOf(entry: string): Promise<string[]> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", repoPath(entry)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  const graph = JSON.parse(new TextDecoder().decode(output.stdout)) as { modules: { specifier: string }[] };
  return graph.modules
    .map((m) => m.specifier)
    .filter((s) => s.startsWith("file:"))
    .map((s) => relative(repoPath(""), fileURLToPath(s)));
}

const under = (folder: string) => (path: string) => path.startsWith(`${folder}/`);

Deno.test("the master's code loads nothing of the worker's", async () => {
  for (const entry of ["server/master.ts", "server/options.ts", "server/worker_process.ts"]) {
    assert.deepEqual((await modulesOf(entry)).filter(under("worker")), [], entry);
  }
});

Deno.test("the worker's code loads nothing of the master's", async () => {
  const modules = await modulesOf("worker.ts");
  assert.deepEqual(modules.filter(under("server")), []);
  assert.ok(modules.includes("worker/connection.ts"), "worker.ts serves through worker/connection.ts");
});

Deno.test("the client loads neither process's code nor their channel", async () => {
  const modules = await modulesOf("client.ts");
  assert.deepEqual(modules.filter((m) => ["server", "worker", "channel"].some((f) => under(f)(m))), []);
});
