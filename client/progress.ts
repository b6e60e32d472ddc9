/**
 * Progress bars for a person watching a terminal, redrawn in place on stderr a few times a second: one per
 * file for `get` and `pull` (bytes, percentage, rate, time left), one for a whole `mirror` run (files done
 * of those listed, bytes received of those expected, rate, time left). Scripts and cron jobs get nothing of
 * them (the CLI uses them only when stderr is a terminal and neither --quiet nor --json is given), so they
 * never pollute logs.
 *
 * @module
 */

/** Receives the progress of one transfer at a time. */
export interface Progress {
  /** A transfer of `total` bytes begins, `done` of them already held (a resumed part). */
  start(label: string, total: number, done: number): void;
  /** `n` more bytes arrived. */
  advance(n: number): void;
  /** The transfer ended (well or not): the bar is cleared. */
  end(): void;
}

/** Shows nothing. */
export const NO_PROGRESS: Progress = { start() {}, advance() {}, end() {} };

/** What the bar shows. */
export interface ProgressState {
  /** What is being transferred. */
  label: string;
  /** Bytes in all; 0 if unknown. */
  total: number;
  /** Bytes held so far. */
  done: number;
  /** Bytes held when this transfer started (not counted in the rate). */
  startedAt: number;
  /** Milliseconds since this transfer started. */
  elapsedMs: number;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** `1.5 MiB`: a byte count for people. */
export function formatBytes(n: number): string {
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** `1:05` or `2:03:04`: a duration in seconds for people. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh > 0 ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** One line of at most `width` columns: label, bar, bytes, percentage, rate and ETA. */
export function renderProgress(state: ProgressState, width: number): string {
  const { total, done } = state;
  const fraction = total > 0 ? Math.min(1, done / total) : 1;
  const rate = state.elapsedMs > 0 ? (done - state.startedAt) / (state.elapsedMs / 1000) : 0;
  const eta = rate > 0 ? formatDuration((total - done) / rate) : "-:--";
  // A total of 0 is unknown (classic mode announces no size): bytes and rate only.
  const numbers = total > 0
    ? `${formatBytes(done)} / ${formatBytes(total)} ${Math.floor(fraction * 100)}% ` +
      `${formatBytes(Math.round(rate))}/s ETA ${eta}`
    : `${formatBytes(done)} ${formatBytes(Math.round(rate))}/s`;
  const barWidth = total > 0 ? Math.max(0, Math.min(30, width - numbers.length - 24)) : 0;
  const filled = Math.round(fraction * barWidth);
  const bar = barWidth > 0 ? `[${"#".repeat(filled)}${".".repeat(barWidth - filled)}] ` : "";
  const room = Math.max(0, width - bar.length - numbers.length - 2);
  const label = state.label.length > room
    ? `…${state.label.slice(state.label.length - room + 1)}`
    : state.label;
  return `${room > 0 ? `${label} ` : ""}${bar}${numbers}`.slice(0, width);
}

/** How often the bar is redrawn at most, in milliseconds. */
const REDRAW_MS = 200;

/** A bar redrawn in place on stderr (a terminal). */
export function terminalProgress(): Progress {
  const encoder = new TextEncoder();
  let state: ProgressState | null = null;
  let started = 0;
  let drawn = 0;
  const draw = () => {
    if (state === null) return;
    state.elapsedMs = performance.now() - started;
    // A terminal that does not know its size (a fresh pseudo-terminal) says 0 columns.
    const width = (Deno.stderr.isTerminal() ? Deno.consoleSize().columns : 0) || 80;
    Deno.stderr.writeSync(encoder.encode(`\r${renderProgress(state, width - 1)}\x1b[K`));
    drawn = performance.now();
  };
  return {
    start(label, total, done) {
      state = { label, total, done, startedAt: done, elapsedMs: 0 };
      started = performance.now();
      draw();
    },
    advance(n) {
      if (state === null) return;
      state.done += n;
      if (performance.now() - drawn >= REDRAW_MS) draw();
    },
    end() {
      if (state === null) return;
      state = null;
      Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
    },
  };
}

/** The step a `mirror` run is in. */
export type TreePhase = "listing" | "hashing" | "fetching" | "deleting";

/** What the bar of a `mirror` run shows. */
export interface TreeCounts {
  /** The step the run is in; while "listing", the totals still grow. */
  phase: TreePhase;
  /** Files listed so far. */
  files: number;
  /** Listed files whose outcome is known (current, fetched, or failed). */
  filesDone: number;
  /** Data bytes received. */
  bytesDone: number;
  /**
   * Data bytes the run expects to receive: the sizes of the files it will fetch, each corrected to what
   * it received once it is done (a resumed or unchanged file brings fewer).
   */
  bytesTotal: number;
  /** Milliseconds since the first byte arrived (0 before): the rate is taken over this time. */
  receivingMs: number;
}

/**
 * One line of at most `width` columns for a `mirror` run: the step, a bar, files done of those listed,
 * bytes received of those expected, rate and time left. While the listing streams in, the totals carry a
 * `+` (more may come) and no bar or time left is shown; the bar follows the bytes once there are bytes to
 * fetch, else the files.
 */
export function renderTreeProgress(counts: TreeCounts, width: number): string {
  const { phase, files, filesDone, bytesDone, bytesTotal } = counts;
  const growing = phase === "listing";
  const more = growing ? "+" : "";
  const rate = counts.receivingMs > 0 ? bytesDone / (counts.receivingMs / 1000) : 0;
  const left = Math.max(0, bytesTotal - bytesDone);
  const eta = !growing && rate > 0 ? formatDuration(left / rate) : "-:--";
  const numbers =
    `${filesDone}/${files}${more} files ${formatBytes(bytesDone)} / ${formatBytes(bytesTotal)}${more} ` +
    `${formatBytes(Math.round(rate))}/s ETA ${eta}`;
  const step = growing ? "listing..." : phase;
  const fraction = bytesTotal > 0 ? bytesDone / bytesTotal : files > 0 ? filesDone / files : 1;
  const barWidth = growing ? 0 : Math.max(0, Math.min(30, width - numbers.length - step.length - 4));
  const filled = Math.round(Math.min(1, fraction) * barWidth);
  const bar = barWidth > 0 ? ` [${"#".repeat(filled)}${".".repeat(barWidth - filled)}]` : "";
  return `${step}${bar} ${numbers}`.slice(0, width);
}

/** Receives the progress of a whole `mirror` run. */
export interface TreeProgress {
  /** The run enters `phase` (the bar is redrawn at once). */
  phase(phase: TreePhase): void;
  /** One more file was listed. */
  listed(): void;
  /** `bytes` more are expected to arrive. */
  expect(bytes: number): void;
  /** `bytes` arrived. */
  received(bytes: number): void;
  /**
   * A listed file is done: `expected` bytes were counted for it by {@link expect}, `received` arrived for
   * it (the total is corrected by the difference).
   */
  fileDone(expected: number, received: number): void;
  /** Prints a line for people on stderr, above the bar. */
  print(line: string): void;
  /** The run ended: the bar is cleared. */
  end(): void;
}

/** Shows no bar; lines are printed as they are. */
export const NO_TREE_PROGRESS: TreeProgress = {
  phase() {},
  listed() {},
  expect() {},
  received() {},
  fileDone() {},
  print(line) {
    console.error(line);
  },
  end() {},
};

/** The bar of a `mirror` run, redrawn in place on stderr (a terminal). */
export function terminalTreeProgress(): TreeProgress {
  const encoder = new TextEncoder();
  const counts: TreeCounts = {
    phase: "listing",
    files: 0,
    filesDone: 0,
    bytesDone: 0,
    bytesTotal: 0,
    receivingMs: 0,
  };
  let firstByte = 0;
  let drawn = 0;
  let ended = false;
  const write = (text: string) => Deno.stderr.writeSync(encoder.encode(text));
  const draw = () => {
    if (ended) return;
    if (firstByte > 0) counts.receivingMs = performance.now() - firstByte;
    const width = (Deno.stderr.isTerminal() ? Deno.consoleSize().columns : 0) || 80;
    write(`\r${renderTreeProgress(counts, width - 1)}\x1b[K`);
    drawn = performance.now();
  };
  const maybeDraw = () => {
    if (performance.now() - drawn >= REDRAW_MS) draw();
  };
  return {
    phase(phase) {
      counts.phase = phase;
      draw();
    },
    listed() {
      counts.files++;
      maybeDraw();
    },
    expect(bytes) {
      counts.bytesTotal += bytes;
    },
    received(bytes) {
      if (firstByte === 0) firstByte = performance.now();
      counts.bytesDone += bytes;
      maybeDraw();
    },
    fileDone(expected, received) {
      counts.filesDone++;
      counts.bytesTotal += received - expected;
      maybeDraw();
    },
    print(line) {
      write(`\r\x1b[K${line}\n`);
      draw();
    },
    end() {
      if (ended) return;
      ended = true;
      write("\r\x1b[K");
    },
  };
}
