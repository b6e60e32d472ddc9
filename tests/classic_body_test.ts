/**
 * A classic-mode body as a worker sends it: a real file, read 256 KiB at a time into the worker-wide block
 * and framed, sent through a real socket pair, must equal the seed's naive framing byte for byte, whatever
 * the budget per pump and however connections take turns with the block.
 */

import assert from "node:assert/strict";
import { close, openRead } from "../ffi/libc.ts";
import { ClassicBody } from "../worker/bodies.ts";
import { FileShrankError } from "../framing.ts";
import { drain, naiveSeedBody, patterned, receiveAll, socketPair, tempDir } from "./helpers.ts";

/** A file of `bytes` opened for reading, closed when disposed. */
function openFile(path: string, bytes: Uint8Array): { fd: number } & Disposable {
  Deno.writeFileSync(path, bytes);
  const fd = openRead(path);
  return { fd, [Symbol.dispose]: () => close(fd) };
}

// libc's symbols are bound on first use and stay bound for the process. Bind the ones used here before any
// test starts: the test sanitizer counts a library opened during a test as a leak.
{
  const dir = Deno.makeTempDirSync();
  using file = openFile(`${dir}/warm`, patterned(1500));
  receiveAll(new ClassicBody(file.fd, 1500));
  Deno.removeSync(dir, { recursive: true });
}

// Around the 256-frame block: empty, one short frame, whole frames, one block, just past it, several blocks.
const SIZES = [0, 1, 999, 1000, 1001, 256_000, 256_001, 600_500];

Deno.test("a classic body sends the seed's framing of the file, whatever the budget per pump", async () => {
  await using dir = await tempDir();
  for (const size of SIZES) {
    const bytes = patterned(size);
    using file = openFile(`${dir.path}/f${size}`, bytes);
    const expected = naiveSeedBody(bytes);
    for (const step of [Infinity, 7_000, 1_003]) {
      assert.deepEqual(
        receiveAll(new ClassicBody(file.fd, size), step),
        expected,
        `size ${size}, step ${step}`,
      );
    }
  }
});

Deno.test("classic bodies taking turns with the worker's one block each send their own file", async () => {
  await using dir = await tempDir();
  const sizes = [600_500, 300_001];
  using opened = new DisposableStack();
  const senders = sizes.map((size, i) => ({
    body: new ClassicBody(opened.use(openFile(`${dir.path}/t${i}`, patterned(size).reverse())).fd, size),
    pair: opened.use(socketPair()),
    received: [] as number[],
    done: false,
  }));
  while (senders.some((s) => !s.done)) {
    for (const s of senders) {
      if (!s.done) s.done = s.body.pump(s.pair.ours, 50_000).status === "done";
      drain(s.pair.theirs, s.received);
    }
  }
  for (const [i, s] of senders.entries()) {
    assert.deepEqual(new Uint8Array(s.received), naiveSeedBody(patterned(sizes[i]).reverse()), `file ${i}`);
  }
});

Deno.test("a classic body whose file was truncated under it throws FileShrankError", async () => {
  await using dir = await tempDir();
  using file = openFile(`${dir.path}/shrinks`, patterned(600_500));
  using pair = socketPair();
  const body = new ClassicBody(file.fd, 600_500);
  const received: number[] = [];
  assert.equal(body.pump(pair.ours, 10_000).status, "yield");
  drain(pair.theirs, received);
  await Deno.truncate(`${dir.path}/shrinks`, 400_000);
  assert.throws(() => {
    while (body.pump(pair.ours, 100_000).status !== "done") drain(pair.theirs, received);
  }, (e) => e instanceof FileShrankError && /ended at byte 400000 of the 600500/.test(e.message));
});
