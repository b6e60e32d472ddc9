/**
 * TLS through a real HAProxy, with the repository's deploy/haproxy-tls.cfg: HAProxy terminates TLS with a
 * throwaway certificate and passes connections on with a PROXY v2 header; `get` and `mirror` go through it
 * with certificate checking on; a wrong CA or server name exits 3 with the reason on one line; and ferry's
 * request log shows the client's address, not HAProxy's (HAProxy connects to ferry from 127.0.0.3 here).
 *
 * Needs haproxy (Debian package haproxy) and openssl; says it skipped, and why, when either is missing.
 */

import assert from "node:assert/strict";
import { makeFile, repoPath, runClient, sha256File, startServer, tempDir, treeOf } from "./helpers.ts";
import { freePort, startHaproxy, which } from "./haproxy.ts";

async function run(command: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(command, { args, cwd, stdin: "null", stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

/**
 * A CA and a server certificate for `ferry.test` signed by it (HAProxy's PEM: chain then key), and a
 * second CA that signed nothing, for the wrong-CA case.
 */
async function makeCertificates(openssl: string, dir: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  for (const ca of ["ca", "other-ca"]) {
    await run(openssl, [
      "req",
      "-x509",
      ...ec,
      "-keyout",
      `${ca}.key`,
      "-out",
      `${ca}.pem`,
      "-days",
      "2",
      "-subj",
      `/CN=ferry test ${ca}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign",
    ], dir);
  }
  await run(
    openssl,
    ["req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=ferry.test"],
    dir,
  );
  await Deno.writeTextFile(
    `${dir}/server.ext`,
    "subjectAltName=DNS:ferry.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
  );
  await run(openssl, [
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.pem",
    "-days",
    "2",
    "-extfile",
    "server.ext",
  ], dir);
  const chain = await Deno.readTextFile(`${dir}/server.pem`);
  await Deno.writeTextFile(`${dir}/haproxy.pem`, chain + await Deno.readTextFile(`${dir}/server.key`));
}

/**
 * deploy/haproxy-tls.cfg with the test's ports and certificate, and HAProxy connecting to ferry from
 * 127.0.0.3, so that a log line showing 127.0.0.1 can only come from the PROXY header.
 */
async function renderConfig(tlsPort: number, ferryPort: number, pem: string): Promise<string> {
  const text = await Deno.readTextFile(repoPath("deploy/haproxy-tls.cfg"));
  const rendered = text
    .replace(/^(\s*)bind :7443 /m, `$1bind 127.0.0.1:${tlsPort} `)
    .replaceAll("/etc/haproxy/ferry.pem", pem)
    .replace(
      /server ferry1 127\.0\.0\.1:7420 (.*)$/m,
      (_, rest: string) =>
        `server ferry1 127.0.0.1:${ferryPort} ${rest.replace("inter 10s", "inter 200ms")} source 127.0.0.3`,
    );
  for (const part of [`127.0.0.1:${tlsPort}`, pem, `inter 200ms source 127.0.0.3`]) {
    assert.ok(rendered.includes(part), `the deploy config no longer has the line for ${part}`);
  }
  return rendered;
}

Deno.test("get and mirror through HAProxy terminating TLS (send-proxy-v2); a wrong CA or name exits 3", async () => {
  const haproxy = which("haproxy");
  const openssl = which("openssl");
  if (haproxy === null || openssl === null) {
    console.log(
      `SKIPPED: ${
        haproxy === null ? "haproxy" : "openssl"
      } is not installed (Debian: apt-get install haproxy openssl)`,
    );
    return;
  }
  await using certs = await tempDir();
  await using served = await tempDir();
  await using out = await tempDir();
  await makeCertificates(openssl, certs.path);
  await makeFile(served.path, "a.bin", 300_000);
  await Deno.mkdir(`${served.path}/sub`);
  await makeFile(`${served.path}/sub`, "b.bin", 2_000_000);

  const server = await startServer([
    "--root",
    served.path,
    "--workers",
    "1",
    "--listen",
    "127.0.0.1:0",
    "--proxy-protocol",
    "127.0.0.3/32",
    "--request-log",
    "-",
    "--log-health", // HAProxy's health check is a ping
  ]);
  const tlsPort = freePort();
  await Deno.writeTextFile(
    `${certs.path}/haproxy.cfg`,
    await renderConfig(tlsPort, server.ports[0], `${certs.path}/haproxy.pem`),
  );
  const proxy = await startHaproxy(haproxy, `${certs.path}/haproxy.cfg`, tlsPort);
  try {
    const address = `127.0.0.1:${tlsPort}`;
    const tls = ["--tls", "--cacert", `${certs.path}/ca.pem`, "--tls-server-name", "ferry.test"];

    const got = await runClient(["get", address, "a.bin", "-o", `${out.path}/a.bin`, ...tls]);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(await sha256File(`${out.path}/a.bin`), await sha256File(`${served.path}/a.bin`));
    // Ferry saw HAProxy connect from 127.0.0.3; the log names the client HAProxy's header named.
    const line = await server.waitForLog(/request=GET "a\.bin"/);
    assert.match(line, /peer=127\.0\.0\.1:\d+ /);

    const mirrored = await runClient(["mirror", address, ".", `${out.path}/copy`, ...tls]);
    assert.equal(mirrored.code, 0, mirrored.stderr);
    assert.deepEqual(await treeOf(`${out.path}/copy`), await treeOf(served.path));

    const wrongCa = await runClient([
      "get",
      address,
      "a.bin",
      "-o",
      `${out.path}/x.bin`,
      "--cacert",
      `${certs.path}/other-ca.pem`,
      "--tls-server-name",
      "ferry.test",
    ]);
    assert.equal(wrongCa.code, 3, wrongCa.stderr);
    assert.equal(wrongCa.stderr.trim().split("\n").length, 1, wrongCa.stderr);
    assert.match(wrongCa.stderr, /TLS: handshake with 'ferry\.test' failed: .*(certificate|UnknownIssuer)/i);

    const wrongName = await runClient([
      "get",
      address,
      "a.bin",
      "-o",
      `${out.path}/x.bin`,
      ...tls.slice(0, 3),
      "--tls-server-name",
      "other.test",
    ]);
    assert.equal(wrongName.code, 3, wrongName.stderr);
    assert.equal(wrongName.stderr.trim().split("\n").length, 1, wrongName.stderr);
    assert.match(
      wrongName.stderr,
      /TLS: handshake with 'other\.test' failed: .*(certificate|NotValidForName)/i,
    );
    await assert.rejects(Deno.stat(`${out.path}/x.bin`), Deno.errors.NotFound);
    // HAProxy's health check (every 200 ms here): a ping behind a LOCAL header, logged with HAProxy's address.
    await server.waitForLog(/peer=127\.0\.0\.3:\d+ .*request=PING .*result=ok/);
  } finally {
    await proxy.stop();
    await server.stop();
  }
});

Deno.test("client: --cacert of a missing file, or of one with no certificate, is a one-line usage error", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/empty.pem`, "not a certificate\n");
  for (const [file, why] of [["missing.pem", "cannot read"], ["empty.pem", "holds no PEM certificate"]]) {
    const r = await runClient(["get", "127.0.0.1:1", "x", "--cacert", `${dir.path}/${file}`]);
    assert.equal(r.code, 2, r.stderr);
    assert.ok(r.stderr.includes(`--cacert`) && r.stderr.includes(why), r.stderr);
  }
});
