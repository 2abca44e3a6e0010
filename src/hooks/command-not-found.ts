import type {Hook} from '@oclif/core';

import {UsageError, errorEnvelope} from '../errors.js';
import {closest} from '../util/closest.js';
import {formatError} from '../ui/error-text.js';

/**
 * An unknown command is a usage error: exit 2 (DESIGN §9), with the nearest command named in
 * plain text, because cron mail and CI logs cannot answer an interactive "did you mean" prompt.
 */
const hook: Hook.CommandNotFound = async function (opts) {
  const ids = opts.config.commands.filter((c) => !c.hidden).map((c) => c.id);
  const typed = opts.id.replaceAll(':', ' ');
  const suggestion = closest(opts.id, ids);
  const topic = opts.id.split(':')[0] ?? '';
  const listing = opts.config.findTopic(topic) ? `dforge help ${topic}` : 'dforge help';
  const err = new UsageError(`"${typed}" is not a dforge command`, {
    nextSteps: [...(suggestion ? [`Did you mean: dforge ${suggestion.replaceAll(':', ' ')}`] : []), `List the commands: ${listing}`],
    data: {command: typed, ...(suggestion ? {suggestion: suggestion.replaceAll(':', ' ')} : {})},
  });
  if (opts.argv?.includes('--json')) process.stdout.write(`${JSON.stringify(errorEnvelope(err), null, 2)}\n`);
  else process.stderr.write(formatError(err, {color: false}));
  this.exit(err.exitCode);
};

export default hook;
