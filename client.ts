/**
 * The ferry client's command line, for scripts, cron jobs and systemd timers: `get` fetches one file,
 * `mirror` a directory tree, `pull` the file a classic-mode server pushes. This module parses the command
 * line, takes the run's lock, waits the splay, sets the deadline, and prints the results and the exit code
 * (see {@link ExitCode}); the transfers live in `fetch_file.ts`, `mirror.ts` and `pull.ts`.
 *
 * Run `deno run -A client.ts --help` for the command line.
 *
 * @module
 */

import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { Deadline } from "./client/deadline.ts";
import { classify, ClientError, ExitCode, usageError } from "./client/failure.ts";
import { fetchFile, type FileReport } from "./client/fetch_file.ts";
import { emptySummary, mirror, type MirrorSummary, normalizeRemoteDir } from "./client/mirror.ts";
import {
  NO_PROGRESS,
  NO_TREE_PROGRESS,
  type Progress,
  terminalProgress,
  terminalTreeProgress,
  type TreeProgress,
} from "./client/progress.ts";
import { printable } from "./client/printable.ts";
import { intoDirectory } from "./client/sink.ts";
import { pull } from "./client/pull.ts";
import { SIGN_HELP, signMain } from "./client/sign_cli.ts";
import {
  defaultStateDir,
  loadTrustedKeys,
  signedFileOf,
  type TrustOptions,
  VERSIONS_FILE,
  VersionStore,
} from "./client/trust.ts";
import { STATE_DIR } from "./client/mirror_state.ts";
import { delay } from "./client/retry.ts";
import { type Endpoint, Session } from "./client/session.ts";
import { splitHostPort } from "./host_port.ts";
import { type ClientToken, readClientToken, TokenFileError } from "./tokens.ts";
import { versionLine } from "./version.ts";

/** The exit codes (defined in `failure.ts`), for scripts that import them from the CLI module. */
export { ExitCode } from "./client/failure.ts";

const HELP = `ferry client: fetch files from a ferry server, verified and published atomically.

Usage:
  client get HOST:PORT PATH [-o OUT|DIR]        fetch PATH; OUT defaults to PATH's base name, a DIR
                                                (or OUT ending in /) gets it under that name,
                                                '-o -' writes to standard output
  client mirror HOST:PORT REMOTE_DIR LOCAL_DIR  make LOCAL_DIR a copy of REMOTE_DIR on the server
                                                ('.' for the served root), over one connection
  client pull HOST:PORT [-o DIR|OUT]            receive the file a classic-mode server pushes: into DIR
                                                under the server's name (default .), or as OUT
${SIGN_HELP}

Options:
  -o, --output OUT          where to write (get, pull)
  --delete                  mirror: remove local files the server no longer has, and emptied directories
  --dry-run                 mirror: list what would be fetched (and deleted, with --delete); change nothing
  --checksum                mirror: hash every local file instead of trusting what .ferry/state recorded
                            of it (for a copy changed behind the state's back, e.g. by a disk fault)
  --compress                get, mirror: offer zstd for file data; the server compresses the files whose sample
                            compresses (worth it on links slower than about 1 Gbit/s; off by default);
                            mirror's listing is offered zstd always
  --no-verify               get, mirror: skip the SHA-256 check of what arrives (sizes are still checked);
                            a stream is then bound by the network, not by hashing (about 1.8 GB/s a core)
  --connect-timeout SECS    give up connecting after this long (default 10)
  --tls                     speak TLS to HOST:PORT (a terminator such as HAProxy in front of the server),
                            checking its certificate against the system's roots and --cacert
  --cacert FILE             also trust the PEM certificate(s) in FILE (implies --tls)
  --tls-server-name NAME    the name the certificate must carry, sent as SNI (implies --tls;
                            default: HOST)
  --stall-timeout SECS      give up when a read waits this long for a byte (default 30)
  --timeout SECS            deadline for the whole run, connecting and retries included (default none);
                            counted from after --splay
  --retries N               tries again after a failure that may pass, with exponential backoff and
                            jitter, at least as long as a busy server asks (default 3; with --timeout,
                            until the deadline)
  --retry-max-time SECS     start no retry later than this after a file's first try (default none)
  --token-file FILE         prove the token in FILE ('NAME SECRET' on one line; open to its owner only)
                            on each connection (get, mirror); default: the file $FERRY_TOKEN_FILE names.
                            The secret itself never goes over the network
  --lock FILE               hold an flock on FILE for the run; if another run holds it, exit 9 at once
  --splay SECS              first wait a random time in [0, SECS), so a fleet's timers do not fire together
  --trust-key PUB           get, mirror: accept only files of a signed manifest (see README, "Signed
                            releases"), signed by this minisign public key; repeat it for several keys
  --manifest REMOTE_PATH    the manifest to go by (default: .ferry-manifest.json in the folder asked for,
                            else in the nearest folder above it)
  --state-dir DIR           get: where the manifest versions seen are kept (default
                            $XDG_STATE_HOME/ferry, else ~/.local/state/ferry); mirror keeps them in
                            LOCAL_DIR/.ferry
  --json                    print one JSON object per file on standard output (mirror: then a summary)
  -q, --quiet               print nothing but errors
  --version                 print the version and exit
  -h, --help                show this help

A file is received into .NAME.ferry-ETAG.part beside the target, checked against the server's size and
SHA-256, then renamed over the target (with the server's mode and mtime); on failure the target is
untouched. A run that was interrupted is resumed by the next one if the file on the server is unchanged.
An existing target whose SHA-256 matches the server's is not transferred again ("unchanged").

Exit codes:
  0 ok                     1 internal error (a bug)       2 usage
  3 connect or timeout     4 server busy after retries    5 not found / forbidden / not a file
  6 protocol error, connection cut, or server failure     7 verification failed (size or SHA-256), or a
                                                           signed release refused
  8 local I/O error        9 locked: another run holds --lock or the same part file
  10 partial (mirror): the server's listing left something out; nothing was deleted
  11 unauthorized: no valid token, or the path is outside its scopes`;

/** What the command line asks for. */
interface ClientOptions {
  command: "get" | "pull" | "mirror";
  endpoint: Endpoint;
  /** get: the remote path; mirror: REMOTE_DIR, normalized. */
  path: string;
  /** get, pull: -o; mirror: LOCAL_DIR. */
  output: string | null;
  /** get, mirror: check the SHA-256 of what arrives. */
  verify: boolean;
  /** get, mirror: offer zstd compression. */
  compress: boolean;
  connectTimeoutMs: number;
  stallTimeoutMs: number;
  timeoutMs: number | null;
  retries: number;
  retryMaxTimeMs: number | undefined;
  lock: string | null;
  splayMs: number;
  delete: boolean;
  dryRun: boolean;
  /** mirror: hash every local file, trusting nothing the state recorded. */
  checksum: boolean;
  json: boolean;
  quiet: boolean;
  /** The token of --token-file (or $FERRY_TOKEN_FILE), or null. */
  token: ClientToken | null;
  /** --trust-key files: signed releases only (none: the server's word is taken). */
  trustKeys: string[];
  /** --manifest: the manifest's path on the server. */
  manifest: string | null;
  /** --state-dir: where get keeps the versions seen. */
  stateDir: string | null;
}

/** Seconds from the command line, in milliseconds; `allowZero` for delays that may be none. */
function seconds(name: string, text: string | undefined, allowZero = false): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n) || n < 0 || (n === 0 && !allowZero)) {
    throw usageError(
      `--${name}: '${text}' is not a ${allowZero ? "non-negative" : "positive"} number of seconds`,
    );
  }
  return n * 1000;
}

/** Splits `HOST:PORT` or `[IPV6]:PORT`; hostnames are allowed on the client side. */
export function parseServerAddress(text: string): Endpoint {
  const split = splitHostPort(text);
  if (split === null || split.port < 1 || split.port > 65535) {
    throw usageError(`'${text}' is not HOST:PORT (IPv6 as [ADDR]:PORT, port 1-65535)`);
  }
  return { hostname: split.host, port: split.port };
}

/** The positional arguments each command takes, after HOST:PORT. */
const POSITIONALS = { get: ["PATH"], pull: [], mirror: ["REMOTE_DIR", "LOCAL_DIR"] } as const;

function parseClientArgs(argv: string[]): ClientOptions | "help" | "version" {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        output: { type: "string", short: "o" },
        "connect-timeout": { type: "string" },
        tls: { type: "boolean" },
        cacert: { type: "string" },
        "tls-server-name": { type: "string" },
        "stall-timeout": { type: "string" },
        timeout: { type: "string" },
        retries: { type: "string" },
        "retry-max-time": { type: "string" },
        lock: { type: "string" },
        "token-file": { type: "string" },
        splay: { type: "string" },
        delete: { type: "boolean" },
        "dry-run": { type: "boolean" },
        checksum: { type: "boolean" },
        "no-verify": { type: "boolean" },
        compress: { type: "boolean" },
        json: { type: "boolean" },
        "trust-key": { type: "string", multiple: true },
        manifest: { type: "string" },
        "state-dir": { type: "string" },
        quiet: { type: "boolean", short: "q" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
      },
    });
  } catch (e) {
    // node:util's messages can run over several lines: the first says what was wrong.
    throw usageError((e as Error).message.split("\n")[0]);
  }
  const { values: v, positionals: p } = parsed;
  if (v.help) return "help";
  if (v.version) return "version";
  const [command, address, ...rest] = p;
  if (command !== "get" && command !== "pull" && command !== "mirror") {
    throw usageError(command ? `unknown command '${command}'` : "give a command: get, mirror or pull");
  }
  if (address === undefined) throw usageError(`${command}: give the server as HOST:PORT`);
  const wanted = POSITIONALS[command];
  if (rest.length < wanted.length) throw usageError(`${command}: give the ${wanted[rest.length]}`);
  if (rest.length > wanted.length) {
    throw usageError(`${command}: unexpected argument '${rest[wanted.length]}'`);
  }
  if (command === "mirror" && v.output !== undefined) {
    throw usageError("mirror: -o is not used (give LOCAL_DIR)");
  }
  if (command !== "mirror" && v.delete) throw usageError(`${command}: --delete is for mirror only`);
  if (command !== "mirror" && v["dry-run"]) throw usageError(`${command}: --dry-run is for mirror only`);
  if (command !== "mirror" && v.checksum) throw usageError(`${command}: --checksum is for mirror only`);
  if (command === "pull" && v.compress) throw usageError("pull: classic mode has no compression");
  if (command === "pull" && v["no-verify"]) {
    throw usageError("pull: classic mode carries no SHA-256 to verify; --no-verify is for get and mirror");
  }
  if (v.json && v.output === "-") {
    throw usageError("--json prints on standard output: it cannot go with -o -");
  }
  // With a deadline, the deadline bounds the retries: a server restarting for a few seconds must not fail
  // a run that had a minute left because three quick tries fell inside the restart.
  const retries = v.retries === undefined ? (v.timeout === undefined ? 3 : Infinity) : Number(v.retries);
  if (v.retries !== undefined && (!Number.isSafeInteger(retries) || retries < 0 || v.retries.trim() === "")) {
    throw usageError(`--retries: '${v.retries}' is not a whole number of 0 or more`);
  }
  if (v.lock === "") throw usageError("--lock: give a file name");
  if (command === "pull" && v["token-file"] !== undefined) {
    throw usageError("pull: classic mode has no handshake; --token-file is for get and mirror");
  }
  const trustKeys = v["trust-key"] ?? [];
  if (trustKeys.length === 0 && (v.manifest !== undefined || v["state-dir"] !== undefined)) {
    throw usageError("--manifest and --state-dir go with --trust-key");
  }
  if (trustKeys.length > 0) {
    if (command === "pull") {
      throw usageError("pull: classic mode has no signed releases; --trust-key is for get and mirror");
    }
    if (v["no-verify"]) {
      throw usageError("--trust-key checks every file's SHA-256: it cannot go with --no-verify");
    }
    if (v.output === "-") {
      throw usageError("--trust-key: standard output cannot take back bytes that fail the check");
    }
    if (command === "mirror" && v["state-dir"] !== undefined) {
      throw usageError(`mirror keeps the versions seen in LOCAL_DIR/${STATE_DIR}: --state-dir is for get`);
    }
  }
  return {
    command,
    endpoint: { ...parseServerAddress(address), ...tlsOf(v, address) },
    path: command === "mirror" ? normalizeRemoteDir(rest[0]) : rest[0] ?? "",
    output: command === "mirror" ? rest[1] : v.output ?? null,
    connectTimeoutMs: seconds("connect-timeout", v["connect-timeout"]) ?? 10_000,
    stallTimeoutMs: seconds("stall-timeout", v["stall-timeout"]) ?? 30_000,
    timeoutMs: seconds("timeout", v.timeout) ?? null,
    retries,
    retryMaxTimeMs: seconds("retry-max-time", v["retry-max-time"], true),
    lock: v.lock ?? null,
    splayMs: seconds("splay", v.splay, true) ?? 0,
    delete: v.delete ?? false,
    dryRun: v["dry-run"] ?? false,
    checksum: v.checksum ?? false,
    verify: !v["no-verify"],
    compress: v.compress ?? false,
    json: v.json ?? false,
    quiet: v.quiet ?? false,
    token: command === "pull" ? null : tokenOf(v["token-file"]),
    trustKeys,
    manifest: v.manifest === undefined ? null : normalizeRemoteDir(v.manifest),
    stateDir: v["state-dir"] ?? null,
  };
}

/**
 * The token of `--token-file`, else of the file `FERRY_TOKEN_FILE` names, else none. Only a file: a secret
 * on the command line or in the environment would show in `ps` and in /proc.
 */
function tokenOf(flag: string | undefined): ClientToken | null {
  const path = flag ?? Deno.env.get("FERRY_TOKEN_FILE");
  if (path === undefined || path === "") return null;
  try {
    return readClientToken(path);
  } catch (e) {
    if (!(e instanceof TokenFileError)) throw e;
    throw usageError(`${flag !== undefined ? "--token-file" : "FERRY_TOKEN_FILE"}: ${e.message}`);
  }
}

/** `--tls`, `--cacert`, `--tls-server-name` as the endpoint's TLS settings (either of the last two implies TLS). */
function tlsOf(
  v: { tls?: boolean; cacert?: string; "tls-server-name"?: string },
  address: string,
): Pick<Endpoint, "tls"> {
  if (!v.tls && v.cacert === undefined && v["tls-server-name"] === undefined) return {};
  const caCerts: string[] = [];
  if (v.cacert !== undefined) {
    let pem: string;
    try {
      pem = Deno.readTextFileSync(v.cacert);
    } catch (e) {
      throw usageError(`--cacert: cannot read '${v.cacert}': ${(e as Error).message}`);
    }
    if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
      throw usageError(`--cacert: '${v.cacert}' holds no PEM certificate`);
    }
    caCerts.push(pem);
  }
  const serverName = v["tls-server-name"] ?? parseServerAddress(address).hostname;
  if (serverName === "") throw usageError("--tls-server-name: give a name");
  return { tls: { caCerts, serverName } };
}

/** Takes the run's lock: an flock on `path` (created if missing), held until the process ends. */
async function takeLock(path: string): Promise<Deno.FsFile> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o644 });
  } catch (e) {
    throw new ClientError(ExitCode.LocalIo, `--lock: cannot open ${path}: ${(e as Error).message}`);
  }
  if (!await file.tryLock(true)) {
    file.close();
    throw new ClientError(ExitCode.Locked, `--lock: another run holds ${path}`);
  }
  return file;
}

/** The JSON line of a file's report (the shape is documented in README.md); absent fields are left out. */
function jsonOf(r: FileReport): Record<string, unknown> {
  return {
    path: r.path,
    target: r.target,
    status: r.status,
    bytes: r.bytes,
    size: r.size,
    sha256: r.sha256,
    seconds: Number(r.seconds.toFixed(3)),
    attempts: r.attempts,
    resumedFrom: r.resumedFrom,
    reused: r.reused,
    requestId: r.requestId,
    error: r.error?.message,
    exitCode: r.error?.exitCode,
  };
}

/**
 * The last `--json` line of a mirror (the shape is documented in README.md): the summary's counts, the
 * bytes received, the time taken, the exit code and the run's own failures.
 */
function jsonSummary(summary: MirrorSummary, options: ClientOptions, seconds: number) {
  const { updated, unchanged, deleted, failed, bytes, exitCode, problems } = summary;
  return {
    summary: {
      dryRun: options.dryRun,
      updated,
      unchanged,
      deleted,
      failed,
      bytes,
      seconds: Number(seconds.toFixed(3)),
      exitCode,
      problems: problems.map((p) => ({ error: p.message, exitCode: p.exitCode })),
    },
  };
}

/**
 * Prints a file's outcome: its JSON line, its error, or (not quiet) a line for people; `say` prints a line
 * on stderr (above a mirror's bar).
 */
function printReport(
  report: FileReport,
  options: ClientOptions,
  say: (line: string) => void = console.error,
): void {
  if (options.json) console.log(JSON.stringify(jsonOf(report)));
  const show = (line: string) => say(printable(line));
  if (report.error) {
    if (report.notAttempted) return; // one line says how many, and why (the summary's problems)
    const where = options.command === "mirror" ? `${report.path}: ` : "";
    const tries = report.attempts > 1 ? ` (after ${report.attempts} attempts)` : "";
    show(`ferry: ${where}${report.error.message}${tries}`);
    return;
  }
  if (options.quiet || options.json || report.target === "-") return;
  const secs = `${report.seconds.toFixed(3)}s`;
  if (options.command === "mirror") {
    if (report.status === "would update") show(`ferry: would update ${report.path} (${report.size} bytes)`);
    else if (report.status === "would delete") show(`ferry: would delete ${report.path}`);
    else if (report.status === "deleted") show(`ferry: deleted ${report.path}`);
    else if (report.status !== "unchanged") {
      show(`ferry: ${report.status} ${report.path} (${report.bytes} bytes)`);
    }
  } else if (report.status === "unchanged") {
    show(
      `ferry: ${options.command} done: ${report.target} unchanged (${report.size} bytes) in ${secs}`,
    );
  } else {
    const resumed = report.resumedFrom !== undefined ? ` (resumed at byte ${report.resumedFrom})` : "";
    show(`ferry: ${options.command} done: ${report.size} bytes in ${secs}${resumed}`);
  }
}

/** The signed-release checks the command line asks for, or undefined without --trust-key. */
function trustOf(options: ClientOptions): TrustOptions | undefined {
  if (options.trustKeys.length === 0) return undefined;
  let versionsFile: string;
  if (options.command === "mirror") versionsFile = join(options.output!, STATE_DIR, VERSIONS_FILE);
  else {
    const dir = options.stateDir ?? defaultStateDir();
    if (dir === null) throw usageError("--trust-key: no HOME to keep the versions seen in: give --state-dir");
    versionsFile = join(dir, VERSIONS_FILE);
  }
  return {
    keys: loadTrustedKeys(options.trustKeys),
    manifestPath: options.manifest ?? undefined,
    versions: new VersionStore(versionsFile),
    readOnly: options.dryRun,
  };
}

/** Runs the command under the deadline; returns the exit code. */
async function run(options: ClientOptions, deadline: Deadline): Promise<number> {
  const progress: Progress = Deno.stderr.isTerminal() && !options.quiet && !options.json
    ? terminalProgress()
    : NO_PROGRESS;
  const common = {
    ...options,
    retryMaxTimeMs: options.retryMaxTimeMs,
    deadline,
    progress,
    signal: deadline.signal,
  };
  if (options.command === "pull") {
    const report = await pull(options.endpoint, options.output, common);
    printReport(report, options);
    return report.error?.exitCode ?? ExitCode.Ok;
  }
  const trust = trustOf(options);
  const session = new Session(options.endpoint, common);
  try {
    if (options.command === "get") {
      const out = options.output;
      const target = out === null
        ? basename(options.path)
        : intoDirectory(out)
        ? join(out, basename(options.path))
        : out;
      let expected;
      try {
        expected = trust && await signedFileOf(session, options.path, trust, common);
      } catch (e) {
        // Refused before the file: its report says so, as any failure of the file would.
        const error = classify(deadline.expired ? deadline.error() : e);
        const report: FileReport = {
          path: options.path,
          target,
          status: "failed",
          bytes: 0,
          seconds: 0,
          attempts: 0,
          error,
        };
        printReport(report, options);
        return error.exitCode;
      }
      const report = await fetchFile(session, options.path, target, {
        ...common,
        lastRequest: true,
        expected,
      });
      printReport(report, options);
      return report.error?.exitCode ?? ExitCode.Ok;
    }
    return await runMirror(session, options, { ...common, trust });
  } catch (e) {
    throw deadline.expired ? deadline.error() : e;
  } finally {
    await session.close();
  }
}

/** Runs `mirror` with one bar for the whole tree; returns the exit code. */
async function runMirror(
  session: Session,
  options: ClientOptions,
  common: Parameters<typeof mirror>[3],
): Promise<number> {
  const bar: TreeProgress = Deno.stderr.isTerminal() && !options.quiet && !options.json
    ? terminalTreeProgress()
    : NO_TREE_PROGRESS;
  const summary = emptySummary();
  const started = performance.now();
  try {
    await mirror(
      session,
      options.path,
      options.output!,
      {
        ...common,
        treeProgress: bar,
        // Only --json prints a line for a file found current (printReport).
        reportsUnchanged: options.json === true,
        // Printed even with --quiet: something put a symlink or a file where a folder belongs.
        onNotice: (message) => bar.print(printable(`ferry: ${message}`)),
      },
      (r) => printReport(r, options, bar.print),
      summary,
    );
  } catch (e) {
    // Nothing could be done (no listing): --json still ends with the summary, which says why.
    const error = classify(common.deadline.expired ? common.deadline.error() : e);
    if (options.json) printFailedSummary(options, error, secondsSince(started), summary);
    throw error;
  } finally {
    bar.end();
  }
  for (const problem of summary.problems) console.error(printable(`ferry: ${problem.message}`));
  if (options.json) console.log(JSON.stringify(jsonSummary(summary, options, secondsSince(started))));
  if (!options.quiet) {
    console.error(
      options.dryRun
        ? `ferry: mirror dry run: ${summary.updated} would update, ${summary.unchanged} unchanged, ` +
          `${summary.deleted} would delete, ${summary.failed} failed`
        : `ferry: mirror done: ${summary.updated} updated, ${summary.unchanged} unchanged, ` +
          `${summary.deleted} deleted, ${summary.failed} failed`,
    );
  }
  return summary.exitCode;
}

const secondsSince = (started: number) => (performance.now() - started) / 1000;

/** Prints the `--json` summary of a mirror that failed as a whole (no listing, or the lock was held). */
function printFailedSummary(
  options: ClientOptions,
  error: ClientError,
  seconds: number,
  summary = emptySummary(),
): void {
  summary.problems.push(error);
  summary.exitCode = error.exitCode;
  console.log(JSON.stringify(jsonSummary(summary, options, seconds)));
}

/** After the deadline, the time given to the run to end by itself before the process exits anyway. */
const DEADLINE_GRACE_MS = 5_000;

/** Runs the client with `argv`; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (argv[0] === "sign" || argv[0] === "keygen") return await signMain(argv);
  let lock: Deno.FsFile | null = null;
  try {
    const options = parseClientArgs(argv);
    if (options === "help" || options === "version") {
      console.log(options === "help" ? HELP : versionLine("ferry"));
      return ExitCode.Ok;
    }
    if (options.lock !== null) {
      try {
        lock = await takeLock(options.lock);
      } catch (e) {
        // A script reading mirror's --json learns why nothing was done from the summary line, as always.
        if (options.json && options.command === "mirror") printFailedSummary(options, classify(e), 0);
        throw e;
      }
    }
    if (options.splayMs > 0) await delay(Math.random() * options.splayMs);
    const deadline = new Deadline(options.timeoutMs);
    // Every wait of the run ends when the deadline aborts; a write that blocks anyway (standard output
    // into a pipe nobody reads) must not keep the process: it exits after a grace period.
    let backstop: ReturnType<typeof setTimeout> | undefined;
    deadline.signal.addEventListener("abort", () => {
      const timer = setTimeout(() => {
        console.error(printable(`ferry: ${deadline.error().message}`));
        Deno.exit(deadline.error().exitCode);
      }, DEADLINE_GRACE_MS);
      Deno.unrefTimer(timer);
      backstop = timer;
    });
    try {
      return await run(options, deadline);
    } finally {
      deadline.dispose();
      clearTimeout(backstop);
    }
  } catch (e) {
    const error = classify(e);
    console.error(
      printable(`ferry: ${error.message}${error.exitCode === ExitCode.Usage ? " (see --help)" : ""}`),
    );
    return error.exitCode;
  } finally {
    lock?.close();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
