import assert from "node:assert/strict";
import { repoPath } from "./helpers.ts";

Deno.test("the benchmark script runs end to end on a tiny case and prints its table", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", repoPath("scripts/bench.ts"), "--size", "1", "--runs", "1", "--output", "-"],
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(stdout, /\| request mode: ferry client get -o \/dev\/null \| \d+\.\d+ \|/);
  assert.match(stdout, /\| classic mode: ferry client pull -o \/dev\/null \| \d+\.\d+ \|/);
  // With gcc the seed's C server and client are built and compared; without it the report says so.
  assert.match(stdout, /ferry's server is \d+\.\dx the seed's C server|no gcc/);
});
