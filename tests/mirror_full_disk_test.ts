/**
 * `client mirror` into a file system that takes no more writes (full, or read-only): the run stops at the
 * first file refused, instead of fetching every other file only to fail it the same way, and publishes
 * nothing half-written. A tmpfs of a few MiB stands for the full disk; mounting one needs root, and the
 * tests say so and skip without it.
 */

import assert from "node:assert/strict";
import { withServer } from "./client_fixture.ts";
import { makeFile, mountTmpfs, runClient, sha256File } from "./helpers.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Runs `body` with a tmpfs of `size` mounted at a new folder of `out`, unmounted after; skips without root. */
async function withSmallDisk(
  out: string,
  size: string,
  body: (disk: string) => Promise<void>,
): Promise<void> {
  const disk = `${out}/disk`;
  await Deno.mkdir(disk);
  if (!await mountTmpfs(disk, size)) {
    console.warn("mirror_full_disk_test: cannot mount a tmpfs here (needs root): the test is skipped");
    return;
  }
  try {
    await body(disk);
  } finally {
    await new Deno.Command("umount", { args: [disk] }).output();
  }
}

/** Every entry below `root`, as paths relative to it, sorted. */
async function entriesBelow(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (rel: string) => {
    for await (const entry of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) {
      const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
      found.push(path);
      if (entry.isDirectory) await walk(path);
    }
  };
  await walk("");
  return found.sort();
}

/** The lines of a run's stderr. */
function linesOf(stderr: string): string[] {
  return stderr.trim().split("\n");
}

Deno.test("mirror into a full disk stops at the first file that does not fit: exit 8, one line for it and one for the stop, every published file whole, no part left", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/tree`);
    // 40 files of 48 KiB, 1.9 MiB in all, into 1 MiB: about half of them fit.
    for (let i = 0; i < 40; i++) {
      await makeFile(`${src}/tree`, `f${String(i).padStart(2, "0")}.bin`, 48 * KiB + i);
    }
    await withSmallDisk(out, "1m", async (disk) => {
      const r = await runClient(["mirror", "-q", address, "tree", `${disk}/copy`]);
      assert.equal(r.code, 8, r.stderr);
      const lines = linesOf(r.stderr);
      assert.equal(lines.length, 2, r.stderr);
      assert.match(lines[0], /^ferry: tree\/f\d\d\.bin: cannot write .*ENOSPC/);
      assert.equal(lines[1], `ferry: stopped fetching: ${disk}/copy: its file system is full (ENOSPC)`);
      const left = await entriesBelow(`${disk}/copy`);
      assert.deepEqual(
        left.filter((name) => /\.part$|\.tmp$/.test(name)),
        [],
        "nothing half-written is left",
      );
      const published = left.filter((name) => name.endsWith(".bin"));
      assert.ok(published.length > 0 && published.length < 40, `${published.length} published`);
      for (const name of published) {
        assert.equal(await sha256File(`${disk}/copy/${name}`), await sha256File(`${src}/tree/${name}`), name);
      }
    });
  });
});

Deno.test("mirror --delete on a full disk stops fetching yet removes what the server no longer has, and the next run has the room it needs", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/tree`);
    await makeFile(`${src}/tree`, "small.txt", 100);
    await makeFile(`${src}/tree`, "release-1.bin", 3 * MiB);
    await withSmallDisk(out, "4m", async (disk) => {
      const copy = `${disk}/copy`;
      const args = ["mirror", "--delete", address, "tree", copy];
      let r = await runClient(args);
      assert.equal(r.code, 0, r.stderr);
      // The next release replaces the first: both do not fit at once.
      await Deno.remove(`${src}/tree/release-1.bin`);
      const next = await makeFile(`${src}/tree`, "release-2.bin", 3 * MiB + 1);
      r = await runClient(args);
      assert.equal(r.code, 8, r.stderr);
      assert.match(r.stderr, /ferry: tree\/release-2\.bin: cannot write .*ENOSPC/);
      assert.match(r.stderr, /ferry: deleted tree\/release-1\.bin\n/);
      assert.match(
        r.stderr,
        new RegExp(`ferry: stopped fetching: ${copy}: its file system is full \\(ENOSPC\\)\n`),
      );
      assert.deepEqual((await entriesBelow(copy)).filter((name) => !name.startsWith(".ferry")), [
        "small.txt",
      ]);
      r = await runClient(args);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await sha256File(`${copy}/release-2.bin`), await sha256File(next));
      assert.deepEqual(
        (await entriesBelow(copy)).filter((name) => !name.startsWith(".ferry")),
        ["release-2.bin", "small.txt"],
      );
    });
  });
});

Deno.test("mirror into a read-only file system stops at the first file: exit 8, one line for it and one for the stop", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/tree`);
    await makeFile(`${src}/tree`, "a.bin", 1000);
    await withSmallDisk(out, "1m", async (disk) => {
      const copy = `${disk}/copy`;
      let r = await runClient(["mirror", "-q", address, "tree", copy]);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 20; i++) await makeFile(`${src}/tree`, `new-${i}.bin`, 2000 + i);
      const remount = await new Deno.Command("mount", { args: ["-o", "remount,ro", disk] }).output();
      assert.ok(remount.success, "remounted read-only");
      r = await runClient(["mirror", "-q", address, "tree", copy]);
      assert.equal(r.code, 8, r.stderr);
      const lines = linesOf(r.stderr);
      assert.equal(lines.length, 2, r.stderr);
      assert.match(lines[0], /^ferry: tree\/new-\d+\.bin: cannot create .*EROFS/);
      assert.equal(lines[1], `ferry: stopped fetching: ${copy}: its file system is read-only (EROFS)`);
    });
  });
});

Deno.test("mirror --delete on a full disk: the files it then gives up on are one line for people, how many and why, and a --json line each", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/tree`);
    await makeFile(`${src}/tree`, "small.txt", 100);
    await withSmallDisk(out, "1m", async (disk) => {
      const copy = `${disk}/copy`;
      let r = await runClient(["mirror", "--delete", "-q", address, "tree", copy]);
      assert.equal(r.code, 0, r.stderr);
      // 30 new files of 48 KiB, 1.4 MiB in all, into what is left of 1 MiB.
      for (let i = 0; i < 30; i++) {
        await makeFile(`${src}/tree`, `new-${String(i).padStart(2, "0")}.bin`, 48 * KiB + i);
      }
      r = await runClient(["mirror", "--delete", "-q", "--json", address, "tree", copy]);
      assert.equal(r.code, 8, r.stderr);
      const lines = linesOf(r.stderr);
      assert.equal(lines.length, 2, r.stderr);
      assert.match(lines[0], /^ferry: tree\/new-\d\d\.bin: cannot write .*ENOSPC/);
      const given = lines[1].match(
        new RegExp(
          `^ferry: (\\d+) files not attempted: stopped fetching: ${copy}: its file system is full \\(ENOSPC\\)$`,
        ),
      );
      assert.ok(given !== null, lines[1]);
      const json = new TextDecoder().decode(r.stdout).trim().split("\n").map((l) => JSON.parse(l));
      const notAttempted = json.filter((l) => l.status === "failed" && /^not attempted: /.test(l.error));
      assert.equal(notAttempted.length, Number(given[1]));
      const published = json.filter((l) => l.status === "updated").length;
      assert.equal(
        published + 1 + notAttempted.length,
        30,
        "each new file is published, failed or not attempted",
      );
    });
  });
});
