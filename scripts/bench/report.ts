/**
 * The benchmark's report: statistics (median and min-max of the runs), markdown tables, and the SVG
 * chart of how cost grows with clients and file size.
 *
 * @module
 */

/** Median, min and max of a set of runs. */
export interface Summary {
  /** The median (NaN if there were no runs). */
  median: number;
  /** The smallest run. */
  min: number;
  /** The largest run. */
  max: number;
}

/** Summarizes `xs` (runs of one figure). */
export function summarize(xs: number[]): Summary {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return { median: NaN, min: NaN, max: NaN };
  const mid = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return { median: mid, min: s[0], max: s[s.length - 1] };
}

/** A number with `digits` decimals, or "-" when it is not a number. */
export function num(x: number, digits = 2): string {
  if (!Number.isFinite(x)) return "-";
  return x.toFixed(digits);
}

/** A count with thousands separators, or "-". */
export function int(x: number): string {
  if (!Number.isFinite(x)) return "-";
  return Math.round(x).toLocaleString("en-US");
}

/** "min-max" of a summary. */
export function range(s: Summary, digits = 2, format: (x: number, d: number) => string = num): string {
  if (!Number.isFinite(s.min)) return "-";
  return `${format(s.min, digits)}-${format(s.max, digits)}`;
}

/** "median (min-max)" of a summary. */
export function medianRange(s: Summary, digits = 2): string {
  if (!Number.isFinite(s.median)) return "-";
  return `${num(s.median, digits)} (${range(s, digits)})`;
}

/** A ratio of two medians as "1.23x" ("-" if either is missing). */
export function ratio(ferry: number, peer: number): string {
  if (!Number.isFinite(ferry) || !Number.isFinite(peer) || peer === 0) return "-";
  const r = ferry / peer;
  return `${r >= 10 ? r.toFixed(0) : r >= 0.1 ? r.toFixed(2) : r.toPrecision(2)}x`;
}

/** A markdown table. */
export function table(head: string[], rows: string[][], align?: ("l" | "r")[]): string[] {
  const sep = head.map((_, i) => ((align?.[i] ?? (i === 0 ? "l" : "r")) === "r" ? "---:" : "---"));
  return [
    `| ${head.join(" | ")} |`,
    `| ${sep.join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
}

/** A section of the report. */
export interface Section {
  /** Its heading (without #). */
  title: string;
  /** Markdown lines. */
  body: string[];
}

/** Bytes as "4 KiB", "64 MiB", "1 GiB". */
export function bytesLabel(n: number): string {
  if (n >= 2 ** 30 && n % 2 ** 30 === 0) return `${n / 2 ** 30} GiB`;
  if (n >= 2 ** 20 && n % 2 ** 20 === 0) return `${n / 2 ** 20} MiB`;
  if (n >= 2 ** 10 && n % 2 ** 10 === 0) return `${n / 2 ** 10} KiB`;
  return `${n} B`;
}

/** One line of a chart: a name and (x, y) points. */
export interface Series {
  /** Legend text. */
  name: string;
  /** Stroke colour. */
  color: string;
  /** Points, x ascending. */
  points: { x: number; y: number }[];
}

/** One panel of a chart: log-scale x, linear y from 0. */
export interface Panel {
  /** Title above the panel. */
  title: string;
  /** X axis label. */
  xLabel: string;
  /** Y axis label. */
  yLabel: string;
  /** Formats an x tick. */
  xTick: (x: number) => string;
  /** The lines. */
  series: Series[];
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** "Nice" upper bound and step for a linear axis from 0 to `max`. */
function niceAxis(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  return { top: Math.ceil(max / step) * step, step };
}

/** Renders panels in a grid (`columns` wide) as one standalone SVG document. */
export function svgChart(title: string, panels: Panel[], columns = 2): string {
  const pw = 420, ph = 260, ml = 64, mr = 34, mt = 34, mb = 48;
  const rows = Math.ceil(panels.length / columns);
  const width = columns * pw;
  const height = 40 + rows * ph + 28;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${
      esc(title)
    }</text>`,
  ];
  panels.forEach((panel, index) => {
    const ox = (index % columns) * pw;
    const oy = 40 + Math.floor(index / columns) * ph;
    const x0 = ox + ml, x1 = ox + pw - mr, y0 = oy + ph - mb, y1 = oy + mt;
    const xs = panel.series.flatMap((s) => s.points.map((p) => p.x));
    const ys = panel.series.flatMap((s) => s.points.map((p) => p.y)).filter((y) => Number.isFinite(y));
    const lx0 = Math.log10(Math.min(...xs)), lx1 = Math.log10(Math.max(...xs));
    const { top, step } = niceAxis(Math.max(0, ...ys));
    const px = (
      x: number,
    ) => (lx1 === lx0 ? (x0 + x1) / 2 : x0 + ((Math.log10(x) - lx0) / (lx1 - lx0)) * (x1 - x0));
    const py = (y: number) => y0 - (y / top) * (y0 - y1);
    out.push(
      `<text x="${(x0 + x1) / 2}" y="${oy + 20}" text-anchor="middle" font-size="13">${
        esc(panel.title)
      }</text>`,
    );
    for (let y = 0; y <= top + step / 2; y += step) {
      out.push(
        `<line x1="${x0}" x2="${x1}" y1="${py(y)}" y2="${py(y)}" stroke="#ddd"/>`,
        `<text x="${x0 - 6}" y="${py(y) + 4}" text-anchor="end">${+y.toPrecision(4)}</text>`,
      );
    }
    for (const x of [...new Set(xs)].sort((a, b) => a - b)) {
      out.push(
        `<line x1="${px(x)}" x2="${px(x)}" y1="${y0}" y2="${y0 + 4}" stroke="#333"/>`,
        `<text x="${px(x)}" y="${y0 + 16}" text-anchor="middle">${esc(panel.xTick(x))}</text>`,
      );
    }
    out.push(
      `<line x1="${x0}" x2="${x1}" y1="${y0}" y2="${y0}" stroke="#333"/>`,
      `<line x1="${x0}" x2="${x0}" y1="${y0}" y2="${y1}" stroke="#333"/>`,
      `<text x="${(x0 + x1) / 2}" y="${y0 + 34}" text-anchor="middle">${esc(panel.xLabel)}</text>`,
      `<text transform="translate(${ox + 16} ${(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">${
        esc(panel.yLabel)
      }</text>`,
    );
    for (const s of panel.series) {
      const pts = s.points.filter((p) => Number.isFinite(p.y));
      if (pts.length === 0) continue;
      out.push(
        `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${
          pts.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ")
        }"/>`,
        ...pts.map((p) =>
          `<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3" fill="${s.color}"/>`
        ),
      );
    }
  });
  // One legend for all panels (they share their series names).
  const names = [...new Map(panels.flatMap((p) => p.series.map((s) => [s.name, s.color] as const)))];
  let lx = 20;
  const ly = height - 12;
  for (const [name, color] of names) {
    out.push(
      `<rect x="${lx}" y="${ly - 9}" width="14" height="4" fill="${color}"/>`,
      `<text x="${lx + 20}" y="${ly - 4}">${esc(name)}</text>`,
    );
    lx += 30 + name.length * 6.5;
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}
