/**
 * Lines for people, made safe to print: a file's name comes from the server (or from whoever wrote into a
 * folder being signed), and a name may hold any character but `/` and NUL. Printed as they are, a newline
 * would forge a line of the log a cron job mails, and an escape sequence would drive the operator's
 * terminal (colours, the window's title, the cursor over earlier lines). `--json` needs none of this: JSON
 * escapes control characters itself.
 *
 * @module
 */

/**
 * Characters a line must not carry as they are: the controls (`Cc`: C0, tab and newline among them, DEL,
 * and C1, where a terminal takes U+009B as ESC [), the line and paragraph separators, and the marks and
 * overrides of bidirectional text, which can make a name read as another.
 */
const UNPRINTABLE = /[\p{Cc}\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/gu;

const NAMED: Record<string, string> = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };

/** The escape a character of {@link UNPRINTABLE} is shown as: `\n`, `\t`, `\r`, `\x1b`, `\u{202e}`. */
function escape(char: string): string {
  const code = char.charCodeAt(0);
  return NAMED[char] ??
    (code <= 0xff
      ? `\\x${code.toString(16).padStart(2, "0")}`
      : `\\u{${code.toString(16).padStart(4, "0")}}`);
}

/**
 * `line` with each character that could break it into two or drive a terminal shown as an escape (see
 * {@link UNPRINTABLE}); every other character, accented letters and all, as it is.
 */
export function printable(line: string): string {
  UNPRINTABLE.lastIndex = 0;
  return UNPRINTABLE.test(line) ? line.replace(UNPRINTABLE, escape) : line;
}
