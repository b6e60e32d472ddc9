/**
 * The ferry server: parses the command line, opens the listeners, then runs the master
 * (`server/master.ts`), which starts the workers. A compiled binary is master and worker in one: given
 * the worker argument, it runs as a worker instead.
 *
 * Run `deno run -A server.ts --help` for the command line.
 *
 * @module
 */

import { HELP, parseServerArgs, UsageError } from "./server/options.ts";
import { Master } from "./server/master.ts";
import { WORKER_ARG } from "./server/worker_process.ts";
import { raiseOpenFileLimit } from "./ffi/libc.ts";
import { type Inherited, takeInheritedListeners } from "./server/inherited.ts";
import { versionLine } from "./version.ts";

async function main(argv: string[]): Promise<number> {
  let options, inherited: Inherited;
  try {
    inherited = takeInheritedListeners();
  } catch (e) {
    console.error(`ferry server: ${(e as Error).message}`);
    return 1;
  }
  try {
    options = parseServerArgs(argv, inherited.listeners.length);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`ferry server: ${e.message} (see --help)`);
    return 2;
  }
  if (options === "help" || options === "version") {
    console.log(options === "help" ? HELP : versionLine("ferry-server"));
    return 0;
  }
  raiseOpenFileLimit();
  const master = new Master(options, inherited);
  try {
    master.listen();
  } catch (e) {
    console.error(`ferry server: ${(e as Error).message}`);
    return 1;
  }
  await master.run();
  return 0;
}

if (import.meta.main) {
  if (Deno.args[0] === WORKER_ARG) {
    // The master itself never loads the worker's modules.
    const { parseWorkerArgs, runWorker } = await import("./worker.ts");
    runWorker(parseWorkerArgs(Deno.args.slice(1)));
  } else {
    Deno.exit(await main(Deno.args));
  }
}
