import {UsageError} from '../errors.js';

/**
 * Confirmation for destructive commands: the value of --confirm, or a typed answer on a terminal.
 * Without a terminal a missing --confirm is an error naming the flag, never a prompt that hangs.
 */
export async function confirmDestructive(options: {provided: string | undefined; expected: string; flag: string; question: string}): Promise<string> {
  if (options.provided !== undefined) return options.provided;
  if (!process.stdin.isTTY || !process.stderr.isTTY) {
    throw new UsageError(`this is destructive and needs ${options.flag} ${options.expected}`, {nextSteps: [`Re-run with ${options.flag} ${options.expected}`]});
  }
  const inquirer = (await import('inquirer')).default;
  // Prompts go to stderr: stdout carries data only.
  const prompt = inquirer.createPromptModule({output: process.stderr});
  const answer = await prompt<{value: string}>([{type: 'input', name: 'value', message: options.question}]);
  return answer.value;
}
