/**
 * `client mirror` never writes outside LOCAL_DIR, whatever symlinks are planted in it: a symlink where
 * the server has a folder (at any depth), where it has a file, at a part's name, or swapped in for a
 * folder while the run goes on. A real server, the real client, real files; the folder the symlinks
 * point to is compared before and after, entry by entry.
 */

import assert from "node:assert/strict";
import { jsonLines, spawnClient, withServer } from "./client_fixture.ts";
import { getOnce, runClient, sha256File, tempDir } from "./helpers.ts";

/** What a folder holds, entry by entry (lstat: a symlink is recorded as one, never followed). */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const entry of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) {
      const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
      const full = `${root}/${path}`;
      const info = await Deno.lstat(full);
      const stamp = `mtime ${info.mtime?.getTime()} mode ${info.mode}`;
      if (info.isSymlink) out[path] = `link ${await Deno.readLink(full)}`;
      else if (info.isDirectory) {
        out[path] = `dir ${stamp}`;
        await walk(path);
      } else out[path] = `file ${await sha256File(full)} ${stamp}`;
    }
  };
  await walk("");
  return out;
}

/** Regular files below `root` with their SHA-256, and the symlinks (never followed); not the mirror's own `.ferry/`. */
async function files(root: string): Promise<{ files: Record<string, string>; links: string[] }> {
  const all = await snapshot(root);
  const result: { files: Record<string, string>; links: string[] } = { files: {}, links: [] };
  for (const [path, what] of Object.entries(all)) {
    if (path.startsWith(".ferry/")) continue; // the mirror's own state
    if (what.startsWith("file ")) result.files[path] = what.split(" ")[1];
    if (what.startsWith("link ")) result.links.push(path);
  }
  return result;
}

/** A folder outside LOCAL_DIR that planted symlinks point to, with files named like the server's. */
async function outsideFolder(root: string): Promise<string> {
  const outside = `${root}/outside`;
  await Deno.mkdir(`${outside}/b/c`, { recursive: true });
  for (const path of ["f.txt", "x.txt", "b/y.txt", "b/c/f.txt", "extra.txt"]) {
    await Deno.writeTextFile(`${outside}/${path}`, `outside's own ${path}\n`);
  }
  return outside;
}

/** The server's tree: a/x.txt, a/b/y.txt, a/b/c/f.txt and top.txt. */
async function serverTree(src: string): Promise<void> {
  await Deno.mkdir(`${src}/a/b/c`, { recursive: true });
  await Deno.writeTextFile(`${src}/a/x.txt`, "server x\n");
  await Deno.writeTextFile(`${src}/a/b/y.txt`, "server y\n");
  await Deno.writeTextFile(`${src}/a/b/c/f.txt`, "server f\n");
  await Deno.writeTextFile(`${src}/top.txt`, "server top\n");
}

Deno.test("mirror replaces a symlink that stands where a folder belongs, at every depth, and writes nothing outside LOCAL_DIR", async () => {
  await withServer(async ({ src, out, address }) => {
    await serverTree(src);
    const outside = await outsideFolder(out);
    const before = await snapshot(outside);
    for (const depth of ["a", "a/b", "a/b/c"]) {
      const local = `${out}/copy-${depth.replaceAll("/", "-")}`;
      const parent = depth.includes("/") ? depth.slice(0, depth.lastIndexOf("/")) : "";
      await Deno.mkdir(`${local}/${parent}`, { recursive: true });
      await Deno.symlink(outside, `${local}/${depth}`);
      const r = await runClient(["mirror", address, ".", local, "--delete", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(`^ferry: ${local}/${depth}: replaced a symlink by a directory [^\\n]*\\n`, "m"),
      );
      assert.ok(jsonLines(r).every((l) => l.status === "updated"), r.stderr);
      assert.deepEqual(await snapshot(outside), before, `${depth}: nothing outside changed`);
      assert.ok((await Deno.lstat(`${local}/${depth}`)).isDirectory);
      assert.deepEqual(await files(local), await files(src));
    }
  });
});

Deno.test("mirror replaces a symlink where the server has a file by the file, never reading or writing what it points to", async () => {
  await withServer(async ({ src, out, address }) => {
    await serverTree(src);
    const outside = await outsideFolder(out);
    // The same bytes as the server's file: a mirror that read through the link would call it current.
    await Deno.writeTextFile(`${outside}/same.txt`, "server top\n");
    const before = await snapshot(outside);
    const local = `${out}/copy`;
    await Deno.mkdir(`${local}/a/b`, { recursive: true });
    await Deno.symlink(`${outside}/same.txt`, `${local}/top.txt`);
    await Deno.symlink(`${outside}/x.txt`, `${local}/a/x.txt`);
    await Deno.symlink(`${outside}/not-there.txt`, `${local}/a/b/y.txt`); // dangling: must not be created
    const r = await runClient(["mirror", address, ".", local, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      Object.fromEntries(jsonLines(r).map((l) => [l.path, l.status])),
      { "a/x.txt": "updated", "a/b/y.txt": "updated", "a/b/c/f.txt": "updated", "top.txt": "updated" },
    );
    assert.deepEqual(await snapshot(outside), before, "nothing outside changed or was created");
    assert.deepEqual(await files(local), await files(src), "the links are now the server's files");
  });
});

Deno.test("mirror never writes a part through a symlink or hard link planted at its name, and --delete does not follow a symlink", async () => {
  await withServer(async ({ src, out, address, server }) => {
    await serverTree(src);
    const outside = await outsideFolder(out);
    await Deno.writeTextFile(`${outside}/short`, "se");
    const before = await snapshot(outside);
    const local = `${out}/copy`;
    await Deno.mkdir(`${local}/a/b`, { recursive: true });
    const etag = async (path: string) => {
      const { json } = await getOnce(server.ports[0], { path });
      assert.equal(typeof json[0].etag, "string", JSON.stringify(json));
      return json[0].etag as string;
    };
    // The parts the next run will resume or create, as symlinks: to a file outside, and dangling.
    await Deno.symlink(`${outside}/x.txt`, `${local}/a/.x.txt.ferry-${await etag("a/x.txt")}.part`);
    await Deno.symlink(`${outside}/new.part`, `${local}/.top.txt.ferry-${await etag("top.txt")}.part`);
    await Deno.symlink(`${outside}/b/y.txt`, `${local}/a/b/.y.txt.ferry-tmp-0000.part`);
    // A hard link at a part's name to a file outside, shorter than the server's: resuming it would
    // append to that file.
    await Deno.mkdir(`${local}/a/b/c`);
    await Deno.link(`${outside}/short`, `${local}/a/b/c/.f.txt.ferry-${await etag("a/b/c/f.txt")}.part`);
    // What --delete finds: a part of a file the server does not have, a folder link to outside.
    await Deno.symlink(`${outside}/extra.txt`, `${local}/.gone.txt.ferry-0123456789.part`);
    await Deno.symlink(outside, `${local}/elsewhere`);
    const r = await runClient(["mirror", address, ".", local, "--delete", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(jsonLines(r).every((l) => l.status === "updated"), r.stderr);
    assert.deepEqual(await snapshot(outside), before, "nothing outside changed, was created or removed");
    const after = await files(local);
    assert.deepEqual(after.files, (await files(src)).files);
    assert.deepEqual(after.links.sort(), [
      ".gone.txt.ferry-0123456789.part",
      "a/b/.y.txt.ferry-tmp-0000.part",
      "elsewhere",
    ], "links that are not in the way stay");
  });
});

Deno.test("a symlink swapped in for a folder while mirror runs writes nothing outside LOCAL_DIR, and the next run puts the tree right", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/d0/sub`, { recursive: true });
    for (let i = 0; i < 60; i++) {
      await Deno.writeTextFile(`${src}/d0/f${i}.txt`, `file ${i}\n`);
      await Deno.writeTextFile(`${src}/d0/sub/g${i}.txt`, `sub file ${i}\n`);
    }
    const outside = await outsideFolder(out);
    for (let i = 0; i < 60; i += 10) await Deno.writeTextFile(`${outside}/f${i}.txt`, "outside's own\n");
    await Deno.mkdir(`${outside}/sub`);
    await Deno.writeTextFile(`${outside}/sub/g0.txt`, "outside's own\n");
    const before = await snapshot(outside);
    const local = `${out}/copy`;
    await Deno.mkdir(local);
    await Deno.symlink(outside, `${local}/d0`); // there from the start: the run replaces it at least once
    const client = spawnClient(["mirror", address, ".", local, "--delete"]);
    let running = true;
    const result = client.done.finally(() => running = false);
    // While the run goes on: whatever stands at d0 (the run's folder, or a link) is moved aside inside
    // LOCAL_DIR, and a link to the outside folder put in its place.
    let swaps = 0;
    for (let i = 0; running && i < 1_000; i++) {
      const moved = await Deno.rename(`${local}/d0`, `${local}/.aside${i}`).then(() => true, () => false);
      const linked = await Deno.symlink(outside, `${local}/d0`).then(() => true, () => false);
      if (moved && linked) swaps++;
    }
    const r = await result;
    assert.ok(r.code === 0 || r.code === 8, r.stderr);
    // Whether the run met the link planted first or one of the test's, or a moment with nothing at d0, is
    // a race: the replacement's message is checked by the test above, not here.
    assert.ok(swaps > 0);
    assert.deepEqual(await snapshot(outside), before, "nothing outside changed, was created or removed");

    // The next run, undisturbed, replaces the last link, fetches what is missing and removes the rest.
    const again = await runClient(["mirror", address, ".", local, "--delete"]);
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(await snapshot(outside), before);
    const after = await files(local);
    assert.deepEqual(after.files, (await files(src)).files);
    assert.ok(after.links.every((l) => l.startsWith(".aside")), "only the links the test moved aside remain");
    assert.ok((await Deno.lstat(`${local}/d0`)).isDirectory);
  });
});

Deno.test("get -o and a LOCAL_DIR that is a symlink follow the path the user wrote", async () => {
  await withServer(async ({ src, out, address }) => {
    await serverTree(src);
    await using real = await tempDir();
    await Deno.symlink(real.path, `${out}/named`);
    const r = await runClient(["mirror", address, "a", `${out}/named`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await Deno.readTextFile(`${real.path}/b/c/f.txt`), "server f\n");
    assert.ok((await Deno.lstat(`${out}/named`)).isSymlink, "LOCAL_DIR itself stays a link");
    const g = await runClient(["get", address, "top.txt", "-o", `${out}/named/b/top.txt`]);
    assert.equal(g.code, 0, g.stderr);
    assert.equal(await Deno.readTextFile(`${real.path}/b/top.txt`), "server top\n");
  });
});
