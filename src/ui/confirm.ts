import {UsageError} from '../errors.js';

/**
 * Confirmation for destructive commands: the value of --confirm, or a typed answer on a terminal,
 * which must be exactly `expected` (or one of `accepts`). Without a terminal a missing --confirm is
 * an error naming the flag, never a prompt that hangs; a wrong one is the same usage error (exit 2)
 * whichever way it came. `rerun` is the whole command that would succeed, for the message.
 */
export async function confirmDestructive(options: {provided: string | undefined; expected: string; accepts?: readonly string[]; flag: string; question: string; rerun?: string}): Promise<string> {
  const rerun = options.rerun ?? `the same command with ${options.flag} ${options.expected}`;
  let answer = options.provided;
  if (answer === undefined) {
    if (!process.stdin.isTTY || !process.stderr.isTTY) {
      throw new UsageError(`this is destructive and needs ${options.flag} ${options.expected}`, {nextSteps: [`Re-run: ${rerun}`]});
    }
    const inquirer = (await import('inquirer')).default;
    // Prompts go to stderr: stdout carries data only.
    const prompt = inquirer.createPromptModule({output: process.stderr});
    answer = (await prompt<{value: string}>([{type: 'input', name: 'value', message: options.question}])).value;
  }
  if (answer !== options.expected && !options.accepts?.includes(answer)) {
    throw new UsageError(`"${answer}" does not match; ${options.flag} must be exactly ${options.expected}${options.accepts?.length ? ` (or ${options.accepts.join(', ')})` : ''}. Nothing was changed`, {nextSteps: [`Re-run: ${rerun}`]});
  }
  return answer;
}
