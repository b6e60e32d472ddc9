/**
 * A progress bar for a person watching a terminal: bytes, percentage, rate and time left, redrawn in place
 * on stderr a few times a second. Scripts and cron jobs get nothing of it (the CLI uses it only when
 * stderr is a terminal and neither --quiet nor --json is given), so it never pollutes logs.
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
