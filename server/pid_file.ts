/**
 * `--pid-file`: the master's pid, written once it serves and removed when it exits. After an upgrade the
 * new master has written its own pid there: the old one removes the file only if it still holds its pid.
 *
 * @module
 */

/** Writes this process's pid to `path`, replacing it whole (a reader never sees it half-written). */
export function writePidFile(path: string): void {
  const temporary = `${path}.${Deno.pid}.tmp`;
  Deno.writeTextFileSync(temporary, `${Deno.pid}\n`, { mode: 0o644 });
  Deno.renameSync(temporary, path);
}

/** Removes `path` if it holds this process's pid (not a successor's). */
export function removePidFile(path: string): void {
  try {
    if (Deno.readTextFileSync(path).trim() === String(Deno.pid)) Deno.removeSync(path);
  } catch {
    // gone already, or replaced by a successor that removed it since: nothing of ours is left
  }
}
