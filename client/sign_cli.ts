/**
 * The publisher's commands of the client binary: `keygen` writes an Ed25519 key pair in minisign's format,
 * `sign` writes the signed manifest of a directory (`manifest.ts`). Both print one line on stderr and
 * return the exit code (0, 2 for the command line or a key that cannot be used, 8 for local I/O).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ExitCode } from "./failure.ts";
import {
  DEFAULT_VALID_FOR_MS,
  generateKeyFiles,
  MANIFEST_NAME,
  ManifestError,
  parseDuration,
  SIGNATURE_NAME,
  signDirectory,
} from "./manifest.ts";
import { SignatureError } from "./minisign.ts";
import { printable } from "./printable.ts";

/** The usage lines of the two commands, for the client's help. */
export const SIGN_HELP =
  `  client keygen -p PUBLIC_KEY -s SECRET_KEY     write a new Ed25519 key pair in minisign's format
                                                (the secret key unencrypted, mode 0600)
  client sign -s SECRET_KEY [--version N] [--expires DURATION] DIR
                                                write the signed manifest of DIR into it:
                                                ${MANIFEST_NAME} and ${SIGNATURE_NAME}`;

class UsageError extends Error {}

function parse(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        "public-key": { type: "string", short: "p" },
        "secret-key": { type: "string", short: "s" },
        version: { type: "string" },
        expires: { type: "string" },
        quiet: { type: "boolean", short: "q" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message.split("\n")[0]);
  }
}

async function keygen(argv: string[]): Promise<string> {
  const { values: v, positionals: p } = parse(argv);
  if (p.length > 0) throw new UsageError(`keygen: unexpected argument '${p[0]}'`);
  if (!v["public-key"] || !v["secret-key"]) {
    throw new UsageError("keygen: give -p PUBLIC_KEY and -s SECRET_KEY");
  }
  if (v.version !== undefined || v.expires !== undefined) {
    throw new UsageError("keygen: --version and --expires are for sign");
  }
  const id = await generateKeyFiles(v["public-key"], v["secret-key"]);
  return `keygen: key ${id}: public key ${v["public-key"]}, secret key ${v["secret-key"]} (keep it secret)`;
}

async function sign(argv: string[]): Promise<string | null> {
  const { values: v, positionals: p } = parse(argv);
  if (p.length !== 1) {
    throw new UsageError(
      p.length === 0 ? "sign: give the DIR to sign" : `sign: unexpected argument '${p[1]}'`,
    );
  }
  if (!v["secret-key"]) throw new UsageError("sign: give -s SECRET_KEY");
  if (v["public-key"] !== undefined) throw new UsageError("sign: -p is for keygen");
  let version: number | undefined;
  if (v.version !== undefined) {
    version = Number(v.version);
    if (v.version.trim() === "" || !Number.isSafeInteger(version) || version < 0) {
      throw new UsageError(`--version: '${v.version}' is not a whole number of 0 or more`);
    }
  }
  let validForMs = DEFAULT_VALID_FOR_MS;
  if (v.expires !== undefined) {
    const ms = parseDuration(v.expires);
    if (ms === null) {
      throw new UsageError(`--expires: '${v.expires}' is not a duration (e.g. 3600, 90m, 12h, 7d)`);
    }
    validForMs = ms;
  }
  const manifest = await signDirectory(p[0], {
    secretKeyFile: v["secret-key"],
    version,
    validForMs,
    onNotice: (message) => console.error(printable(`ferry: sign: ${message}`)),
  });
  if (v.quiet) return null;
  return `sign: ${
    p[0]
  }: ${manifest.files.size} files, version ${manifest.version}, expires ${manifest.expires.toISOString()}`;
}

/** Runs `keygen` or `sign` (`argv[0]`); returns the exit code. */
export async function signMain(argv: string[]): Promise<number> {
  try {
    if (parse(argv.slice(1)).values.help) {
      console.log(`Usage:\n${SIGN_HELP}\n\nSee README.md, "Signed releases".`);
      return ExitCode.Ok;
    }
    const line = argv[0] === "keygen" ? await keygen(argv.slice(1)) : await sign(argv.slice(1));
    if (line !== null) console.error(printable(`ferry: ${line}`));
    return ExitCode.Ok;
  } catch (e) {
    const message = (e as Error).message;
    if (e instanceof UsageError || e instanceof SignatureError || e instanceof ManifestError) {
      console.error(printable(`ferry: ${message}`));
      return ExitCode.Usage;
    }
    if (e instanceof Deno.errors.AlreadyExists) {
      console.error(printable(`ferry: keygen: will not overwrite a key file: ${message}`));
      return ExitCode.Usage;
    }
    console.error(printable(`ferry: ${argv[0]}: ${message}`));
    return ExitCode.LocalIo;
  }
}
