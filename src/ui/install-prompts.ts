import type {PartialAnswers, Question} from '../install/answers.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * Asks the open install questions on the terminal (stderr, like all progress), one at a time, each
 * with its default pre-filled. Only called when stdin and stderr are a TTY.
 */
export async function askInstallQuestions(dir: InstallDir, questions: Question[], known: PartialAnswers): Promise<PartialAnswers> {
  const inquirer = (await import('inquirer')).default;
  const prompt = inquirer.createPromptModule({output: process.stderr});
  const answers: PartialAnswers = {};
  for (const q of questions) {
    // Later defaults depend on earlier answers (the backup directory names the region).
    const current = {...known, ...answers};
    if (q.targets && !q.targets.includes(current.target ?? 'compose')) continue;
    const fallback = q.default?.(current, dir);
    const base = {name: 'value', message: q.message, ...(fallback === undefined ? {} : {default: fallback})};
    const question =
      q.kind === 'select'
        ? {...base, type: 'select' as const, choices: (q.choices ?? []).map((c) => ({name: c, value: c}))}
        : q.kind === 'number'
          ? {...base, type: 'number' as const, required: true}
          : {...base, type: 'input' as const, required: fallback === undefined};
    const {value} = await prompt<{value: string | number}>([question as never]);
    (answers as Record<string, unknown>)[q.key] = typeof value === 'string' ? value.trim() : value;
  }
  return answers;
}

/** Prompts are possible only when someone is at a terminal on both ends. */
export const canPrompt = (): boolean => Boolean(process.stdin.isTTY && process.stderr.isTTY);
