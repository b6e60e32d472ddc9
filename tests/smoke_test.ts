import assert from "node:assert/strict";
import { RawConnection, runClient, startServer, tempDir } from "./helpers.ts";

Deno.test("a server started on port 0 serves the demo file to the client", async () => {
  await using dir = await tempDir();
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", "demo", "--workers", "2"]);
  try {
    const r = await runClient(["get", `127.0.0.1:${server.ports[0]}`, "hello.txt", "-o", `${dir.path}/h`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await Deno.readTextFile(`${dir.path}/h`), await Deno.readTextFile("demo/hello.txt"));
    const raw = await RawConnection.open(server.ports[0]);
    await raw.sendRequest({ op: "ping" });
    assert.equal((await raw.readResponse()).types, "H");
    raw.close();
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});
