import type {DforgeError} from '../errors.js';

/** Renders a typed error as "what happened / what to do" for a human on stderr. */
export function formatError(err: DforgeError, options: {color: boolean}): string {
  const label = err.kind === 'bug' ? 'Bug' : 'Error';
  const head = options.color ? `\u001B[31m${label}:\u001B[0m` : `${label}:`;
  const lines = [`${head} ${err.message}`];
  if (err.nextSteps.length > 0) {
    lines.push('What to do:');
    for (const step of err.nextSteps) lines.push(`  - ${step}`);
  }
  return `${lines.join('\n')}\n`;
}
