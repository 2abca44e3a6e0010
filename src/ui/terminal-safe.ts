/**
 * Text that can't drive a terminal: C0 and C1 controls (ESC starts every ANSI sequence, CSI is
 * U+009B), DEL, line and paragraph separators, and the bidirectional overrides that reorder what
 * a reader sees, are shown as visible escapes (\x1b, \u202e) rather than dropped, so an attempt
 * stays visible to the operator.
 */
export function terminalSafe(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
