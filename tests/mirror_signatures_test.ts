/**
 * The signatures `mirror` keeps of its large files (`client/signature_store.ts`, `whole_signatures.ts`):
 * kept under LOCAL_DIR's `.ferry/signatures/` with the SHA-256 of the copy they describe, taken to plan the
 * next delta of that file, never trusted past the whole file's SHA-256, forgotten with the file, and never
 * written through a symlink. A real server and the real client over loopback, real files.
 *
 * @module
 */

import assert from "node:assert/strict";
import { encodeSignature, signatureOf } from "../delta.ts";
import { GUESS_MIN_BYTES } from "../client/delta_fetch.ts";
import { loadHashing } from "../hashing.ts";
import { jsonLines, listDir, withServer } from "./client_fixture.ts";
import { concat, randomBytes, runClient, sha256, tempDir } from "./helpers.ts";

const MiB = 1024 * 1024;

/** `mirror --json` of the server's root into `out`, checked to succeed; the line of `a.bin`. */
async function mirror(address: string, out: string, ...extra: string[]): Promise<Record<string, unknown>> {
  const r = await runClient(["mirror", address, ".", out, "--json", ...extra]);
  assert.equal(r.code, 0, r.stderr);
  return jsonLines(r).find((l) => l.path === "a.bin") ?? {};
}

/** The signature files kept in `out`, each as its SHA-256 line and the signature's bytes. */
async function kept(out: string): Promise<{ sha256: string; signature: Uint8Array }[]> {
  const folder = `${out}/.ferry/signatures`;
  const names = await listDir(folder).catch(() => []);
  return await Promise.all(names.map(async (name) => {
    const bytes = await Deno.readFile(`${folder}/${name}`);
    return { sha256: new TextDecoder().decode(bytes.subarray(0, 64)), signature: bytes.subarray(65) };
  }));
}

/**
 * Mirrors a file of 3 MiB into `out`, then a version of it with 4 KiB changed, and writes a third such
 * version on the server: the three versions, and the name of the file kept for the copy of the second.
 */
async function thirdVersionPending(
  src: string,
  out: string,
  address: string,
): Promise<{ first: Uint8Array; second: Uint8Array; third: Uint8Array; name: string }> {
  const first = randomBytes(3 * MiB);
  await Deno.writeFile(`${src}/a.bin`, first);
  await mirror(address, out);
  const second = concat(first.subarray(0, MiB), randomBytes(4096), first.subarray(MiB + 4096));
  await Deno.writeFile(`${src}/a.bin`, second);
  await mirror(address, out);
  const [name] = await listDir(`${out}/.ferry/signatures`);
  const third = concat(second.subarray(0, 2 * MiB), randomBytes(4096), second.subarray(2 * MiB + 4096));
  await Deno.writeFile(`${src}/a.bin`, third);
  return { first, second, third, name };
}

/** Rewrites the kept file `name` in `out` to say that `signature` describes a copy of SHA-256 `sha`. */
async function plant(out: string, name: string, sha: string, signature: Uint8Array): Promise<void> {
  await Deno.writeFile(
    `${out}/.ferry/signatures/${name}`,
    concat(new TextEncoder().encode(`${sha}\n`), signature),
  );
}

Deno.test("mirror keeps the signature of a large file it fetched whole or built by delta, its next delta is byte-identical, and --delete forgets it", async () => {
  await loadHashing();
  await withServer(async ({ src, out, address }) => {
    const first = randomBytes(3 * MiB);
    await Deno.writeFile(`${src}/a.bin`, first);
    await Deno.writeFile(`${src}/b.txt`, new Uint8Array(10));
    await mirror(address, out);
    assert.deepEqual(
      await kept(out),
      [{ sha256: sha256(first), signature: encodeSignature(signatureOf(first)) }],
      "a large file fetched whole has its signature asked for and kept",
    );
    const second = concat(first.subarray(0, MiB), randomBytes(64 * 1024), first.subarray(MiB));
    await Deno.writeFile(`${src}/a.bin`, second);
    assert.equal((await mirror(address, out)).status, "updated");
    assert.deepEqual(await kept(out), [{
      sha256: sha256(second),
      signature: encodeSignature(signatureOf(second)),
    }]);
    const third = concat(second.subarray(0, 2 * MiB), randomBytes(4096), second.subarray(2 * MiB + 4096));
    await Deno.writeFile(`${src}/a.bin`, third);
    const line = await mirror(address, out);
    assert.equal(line.status, "updated");
    assert.ok((line.reused as number) > 2 * MiB, `only ${line.reused} bytes reused`);
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), third);
    assert.deepEqual(await kept(out), [{
      sha256: sha256(third),
      signature: encodeSignature(signatureOf(third)),
    }]);
    // A run that only deletes (b.txt is current): nothing else needed a hash.
    await Deno.remove(`${src}/a.bin`);
    assert.equal((await mirror(address, out, "--delete")).status, "deleted");
    assert.deepEqual(await kept(out), []);
  });
});

Deno.test("a copy of GUESS_MIN_BYTES or more is guessed into the part while the server signs: appended to, changed in place or with bytes inserted, it is byte-identical and only the change comes over", async () => {
  await loadHashing();
  await withServer(async ({ src, out, address }) => {
    let version = randomBytes(GUESS_MIN_BYTES);
    await Deno.writeFile(`${src}/a.bin`, version);
    await mirror(address, out);
    assert.equal((await kept(out)).length, 1, "the next delta is planned from a kept signature");
    const edits: [string, (v: Uint8Array) => Uint8Array][] = [
      ["appended to", (v) => concat(v, randomBytes(MiB))],
      [
        "changed in place",
        (v) => concat(v.subarray(0, 40 * MiB), randomBytes(4096), v.subarray(40 * MiB + 4096)),
      ],
      [
        "with bytes inserted",
        (v) => concat(v.subarray(0, 20 * MiB), randomBytes(4096), v.subarray(20 * MiB)),
      ],
    ];
    for (const [how, edit] of edits) {
      version = edit(version);
      await Deno.writeFile(`${src}/a.bin`, version);
      // A guess kept past the change would build a file that fails its SHA-256, which then comes whole.
      const line = await mirror(address, out, "--retries", "0");
      assert.equal(line.status, "updated", how);
      assert.ok((line.bytes as number) < 2 * MiB, `${how}: ${line.bytes} bytes came over`);
      assert.deepEqual(await Deno.readFile(`${out}/a.bin`), version, how);
    }
    assert.deepEqual((await listDir(out)).filter((n) => n !== ".ferry"), ["a.bin"], "no part left");
  });
});

Deno.test("a kept signature that does not describe the old copy builds a file that fails its SHA-256: the file is fetched whole in the same try, and the run succeeds", async () => {
  await loadHashing();
  await withServer(async ({ src, out, address }) => {
    const { second, third, name } = await thirdVersionPending(src, out, address);
    // The kept file now claims the copy (of SHA-256 `second`, as the state says) has the chunks of `third`:
    // planned from it, the whole new file would be copied from the old one.
    const [{ signature }] = await kept(out);
    const lie = encodeSignature(signatureOf(third));
    assert.notDeepEqual(lie, signature);
    await plant(out, name, sha256(second), lie);
    // Within the same try: no retry is needed for it.
    const line = await mirror(address, out, "--retries", "0");
    assert.equal(line.status, "updated");
    assert.equal(line.attempts, 1);
    assert.ok((line.bytes as number) >= third.byteLength, `${line.bytes} bytes: the file did not come whole`);
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), third);
    assert.deepEqual((await listDir(out)).filter((n) => n !== ".ferry"), ["a.bin"], "no part left");
  });
});

Deno.test("a kept signature of another copy is not taken, and a symlink planted at .ferry/signatures is neither followed nor written through", async () => {
  await loadHashing();
  await withServer(async ({ src, out, address }) => {
    await using elsewhere = await tempDir();
    const { first, third, name } = await thirdVersionPending(src, out, address);
    // A kept file whose SHA-256 line is not the copy's: its (lying) chunks are not used, the delta cuts.
    await plant(out, name, sha256(first), encodeSignature(signatureOf(third)));
    const line = await mirror(address, out);
    assert.ok((line.bytes as number) < MiB, `${line.bytes} bytes came over for a 4 KiB edit`);
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), third);
    // The folder replaced by a symlink to another folder: the next delta succeeds and writes nothing there.
    await Deno.remove(`${out}/.ferry/signatures`, { recursive: true });
    await Deno.symlink(elsewhere.path, `${out}/.ferry/signatures`);
    const fourth = concat(third.subarray(0, MiB), randomBytes(4096), third.subarray(MiB + 4096));
    await Deno.writeFile(`${src}/a.bin`, fourth);
    assert.equal((await mirror(address, out)).status, "updated");
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), fourth);
    assert.deepEqual(await listDir(elsewhere.path), []);
    assert.ok((await Deno.lstat(`${out}/.ferry/signatures`)).isSymlink);
  });
});
