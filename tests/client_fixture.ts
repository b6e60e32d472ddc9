/**
 * What the client's tests share: a one-worker server over a fresh directory with a fresh output
 * directory, client runs in the foreground or background, their `--json` lines, and waits for log lines.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ClientResult, eventually, repoPath, startServer, tempDir, type TestServer } from "./helpers.ts";

/** What a test running against a server gets. */
export interface Fixture {
  /** The served directory. */
  src: string;
  /** An empty directory for the client's output. */
  out: string;
  /** The server (one worker). */
  server: TestServer;
  /** `127.0.0.1:PORT` of the server. */
  address: string;
}

/**
 * Runs `body` against a fresh one-worker server (one worker: every request meets the same hash cache and
 * log) with `serverArgs` added; the server must then stop cleanly.
 */
export async function withServer(
  body: (f: Fixture) => Promise<void>,
  serverArgs: string[] = [],
): Promise<void> {
  await using src = await tempDir();
  await using out = await tempDir();
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    src.path,
    "--workers",
    "1",
    ...serverArgs,
  ]);
  try {
    await body({ src: src.path, out: out.path, server, address: `127.0.0.1:${server.ports[0]}` });
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
}

/** Arguments for `get NAME` from `address` into `out/NAME`, then `extra`. */
export function getArgs(address: string, name: string, out: string, ...extra: string[]): string[] {
  return ["get", address, name, "-o", `${out}/${name}`, ...extra];
}

/** A client run in the background. */
export interface RunningClient {
  /** The process, to send signals to. */
  process: Deno.ChildProcess;
  /** Resolves when it exits. */
  done: Promise<ClientResult>;
}

/** Starts `client.ts` with `args` without waiting for it. */
export function spawnClient(args: string[]): RunningClient {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", repoPath("client.ts"), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const done = process.output().then((out) => ({
    code: out.code,
    stderr: new TextDecoder().decode(out.stderr),
    stdout: out.stdout,
  }));
  return { process, done };
}

/** Every `--json` line a run printed, parsed. */
export function allJsonLines(r: ClientResult): Record<string, unknown>[] {
  const text = new TextDecoder().decode(r.stdout).trim();
  return text === "" ? [] : text.split("\n").map((l) => JSON.parse(l));
}

/** The per-file `--json` lines a run printed, parsed (a mirror's closing summary left out). */
export function jsonLines(r: ClientResult): Record<string, unknown>[] {
  return allJsonLines(r).filter((l) => !("summary" in l));
}

/** Names in a directory, sorted. */
export async function listDir(path: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(path)) names.push(entry.name);
  return names.sort();
}

/** The server's log lines matching `pattern`, once there are at least `count` (the log is read as it comes). */
export async function logged(server: TestServer, pattern: RegExp, count = 1): Promise<string[]> {
  const lines = () => server.log.filter((l) => pattern.test(l));
  await eventually(`${count} log lines matching ${pattern}`, () => Promise.resolve(lines().length >= count));
  return lines();
}
