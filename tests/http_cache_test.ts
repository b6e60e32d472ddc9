/**
 * ferry as the origin of an HTTP cache: a real nginx, started by the test with its own configuration and
 * directories, caches ferry's file in 1 MiB slices (`proxy_cache` with the slice module, one fetch per slice
 * with `proxy_cache_lock`). Ten clients fetch the file through it at once, and a few fetch pieces of it with
 * `Range: bytes=a-b` as a P2P engine's origin fetch does: every byte arrives right, and ferry's request log
 * shows each slice's byte range served once. Skipped, saying so, without nginx or curl.
 */

import assert from "node:assert/strict";
import { eventually, makeFile, startServer, tempDir } from "./helpers.ts";

const MiB = 1024 * 1024;
const SIZE = 2 * MiB + 12345;
const CLIENTS = 10;

async function runs(tool: string): Promise<boolean> {
  try {
    await new Deno.Command(tool, { args: ["-v"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

/** A port free at the moment (nginx binds it itself). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** nginx's configuration: a caching reverse proxy for `origin`, in slices, everything under `prefix`. */
function nginxConfig(prefix: string, port: number, origin: number): string {
  // Run as the current user: as root, nginx would otherwise hand its workers to "nobody", who cannot
  // write the temporary cache directory.
  return `${Deno.uid() === 0 ? "user root;" : ""}
worker_processes 2;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;
events { worker_connections 256; }
http {
    access_log ${prefix}/access.log;
    client_body_temp_path ${prefix}/body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    proxy_cache_path ${prefix}/cache levels=1:2 keys_zone=ferry:4m max_size=1g inactive=1h use_temp_path=off;
    server {
        listen 127.0.0.1:${port};
        location / {
            slice 1m;
            proxy_cache ferry;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://127.0.0.1:${origin};
        }
    }
}
`;
}

Deno.test("http: through nginx's slice cache, ten clients and Range pieces get the right bytes, and ferry serves each slice once", async () => {
  if (!await runs("nginx") || !await runs("curl")) {
    console.warn("http_cache_test: nginx or curl is not installed: the caching-proxy test skipped");
    return;
  }
  await using dir = await tempDir();
  const root = `${dir.path}/served`;
  const prefix = `${dir.path}/nginx`;
  await Deno.mkdir(root);
  await Deno.mkdir(prefix);
  const file = await Deno.readFile(await makeFile(root, "big.bin", SIZE));
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", root, "--workers", "1"]);
  const port = freePort();
  await Deno.writeTextFile(`${prefix}/nginx.conf`, nginxConfig(prefix, port, server.ports[0]));
  const nginx = new Deno.Command("nginx", {
    args: ["-p", prefix, "-c", `${prefix}/nginx.conf`, "-e", `${prefix}/error.log`, "-g", "daemon off;"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const nginxStderr = new Response(nginx.stderr).text();
  try {
    await eventually("nginx listens", async () => {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        return true;
      } catch {
        return false;
      }
    });
    const url = `http://127.0.0.1:${port}/big.bin`;
    const fetches = Array.from({ length: CLIENTS }, (_, i) =>
      new Deno.Command("curl", {
        args: ["-s", "-S", "--fail", "-o", `${dir.path}/client-${i}.bin`, url],
        stdin: "null",
      }).output());
    // Pieces as a P2P engine asks its origin for them: Range a-b, answered 206 with Content-Length.
    const pieces: [number, number][] = [[0, MiB - 1], [MiB - 17, 2 * MiB], [2 * MiB, SIZE - 1]];
    const pieceFetches = pieces.map(([a, b]) =>
      new Deno.Command("curl", {
        args: ["-s", "-S", "--fail", "-r", `${a}-${b}`, "-D", "/dev/stderr", url],
        stdin: "null",
      }).output()
    );
    for (const [i, out] of (await Promise.all(fetches)).entries()) {
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.deepEqual(await Deno.readFile(`${dir.path}/client-${i}.bin`), file, `client ${i}`);
    }
    for (const [i, out] of (await Promise.all(pieceFetches)).entries()) {
      const [a, b] = pieces[i];
      const head = new TextDecoder().decode(out.stderr);
      assert.match(head, /^HTTP\/1\.1 206 /);
      assert.match(head, new RegExp(`Content-Length: ${b - a + 1}\r\n`, "i"));
      assert.match(head, new RegExp(`Content-Range: bytes ${a}-${b}/${SIZE}\r\n`, "i"));
      assert.deepEqual(out.stdout, file.subarray(a, b + 1), `piece ${a}-${b}`);
    }
    // A last request straight to ferry: once its line is in the log, every earlier line of the (one)
    // worker is too.
    const marker = await fetch(`http://127.0.0.1:${server.ports[0]}/big.bin`, {
      headers: { Range: "bytes=0-0" },
    });
    await marker.arrayBuffer();
    await server.waitForLog(/HTTP GET "big\.bin" range=0-0 /);
    const served = server.log.flatMap((l) => {
      const m = /HTTP GET "big\.bin"(?: range=(\d+)-(\d+))? .*result=(\S+ \S+)/.exec(l);
      return m === null ? [] : [`${m[1] ?? "whole"}-${m[2] ?? ""} ${m[3]}`];
    }).filter((r) => r !== "0-0 ok http=206");
    const slices = Array.from({ length: Math.ceil(SIZE / MiB) }, (_, i) => {
      const end = Math.min(SIZE, (i + 1) * MiB) - 1;
      return `${i * MiB}-${end} ok http=206`;
    });
    assert.deepEqual([...served].sort(), [...slices].sort(), `ferry served:\n${served.join("\n")}`);
  } finally {
    nginx.kill("SIGTERM");
    await nginx.status;
    await nginxStderr;
    await server.stop();
  }
});
