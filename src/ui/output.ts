/**
 * Where a command's words go. stdout carries data only; progress goes to stderr.
 * Colour and animation only on an interactive stderr, never in `--json` runs, never with NO_COLOR:
 * cron mails exactly what a non-TTY run prints.
 */
export interface Output {
  /** True when stderr may carry ANSI colour and animation. */
  readonly color: boolean;
  /** --quiet: no progress at all. */
  readonly quiet: boolean;
  /** One progress line on stderr (suppressed by --quiet). */
  progress(line: string): void;
  /** A warning on stderr; printed even with --quiet, because it asks for attention. */
  warn(line: string): void;
}

export interface OutputOptions {
  readonly json: boolean;
  readonly quiet: boolean;
  readonly stderr?: NodeJS.WriteStream;
  readonly env?: NodeJS.ProcessEnv;
}

export function createOutput(options: OutputOptions): Output {
  const stderr = options.stderr ?? process.stderr;
  const env = options.env ?? process.env;
  const color = !options.json && stderr.isTTY === true && env.NO_COLOR === undefined && env.TERM !== 'dumb';
  return {
    color,
    quiet: options.quiet,
    progress(line) {
      if (!options.quiet) stderr.write(`${line}\n`);
    },
    warn(line) {
      stderr.write(`${color ? '\u001B[33mwarning\u001B[0m' : 'warning'}: ${line}\n`);
    },
  };
}
