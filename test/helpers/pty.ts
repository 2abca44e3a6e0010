import {spawn} from 'node:child_process';

export interface PtySession {
  /** Waits for `prompt` to appear after the last one answered, then types `keys`. */
  answer(prompt: string, keys: string): Promise<void>;
  readonly exit: Promise<{code: number | null; output: string}>;
}

/**
 * Runs a shell command on a real pseudo-terminal (util-linux `script`), so dforge sees a TTY on
 * stdin and stderr and prompts exactly as it would for an operator.
 */
export function startPty(command: string): PtySession {
  // -q quiet, -f flush at once, -e return the command's exit code, -c the command; no typescript file.
  const child = spawn('script', ['-qfec', command, '/dev/null'], {env: {...process.env, TERM: 'xterm-256color', COLUMNS: '200', LINES: '50'}, stdio: ['pipe', 'pipe', 'pipe']});
  let output = '';
  let consumed = 0;
  const waiters: Array<() => void> = [];
  const onData = (c: Buffer): void => {
    output += c.toString();
    for (const w of waiters.splice(0)) w();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exit = new Promise<{code: number | null; output: string}>((resolve) => child.on('close', (code) => resolve({code, output})));
  return {
    async answer(prompt, keys) {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const at = output.indexOf(prompt, consumed);
        if (at >= 0) {
          consumed = at + prompt.length;
          break;
        }
        if (Date.now() > deadline) throw new Error(`no prompt "${prompt}" within 60 s; output so far:\n${output}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 500);
        });
      }
      // Let the prompt finish drawing before typing, as a person would.
      await new Promise((r) => setTimeout(r, 150));
      child.stdin.write(keys);
    },
    exit,
  };
}
