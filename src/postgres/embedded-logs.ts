/**
 * An embedded cluster's logs, in its run directory: what pg_ctl captured while starting, then the
 * logging collector's daily files (see dforge.conf in embedded-config.ts). A failed start shows
 * their last lines, with password literals masked.
 */

import {promises as fs} from 'node:fs';
import path from 'node:path';

import {lastLines} from './embedded-process.js';
import {readNoFollow} from './read-no-follow.js';

/** What pg_ctl captures before the logging collector takes over: the reason a start failed, mostly. */
export const STARTUP_LOG = 'startup.log';
const SERVER_LOG = /^postgresql-.*\.log$/;

const LOG_TAIL_LINES = 30;

/** The startup log, then the collector log written since `sinceMs`, with any password literal masked. */
export async function serverLogTail(runDir: string, sinceMs: number): Promise<string> {
  const sections: string[] = [];
  const startup = await readNoFollow(path.join(runDir, STARTUP_LOG));
  if (startup?.trim()) sections.push(lastLines(startup, LOG_TAIL_LINES));
  const logs = await Promise.all(
    (await fs.readdir(runDir).catch(() => [] as string[]))
      .filter((name) => SERVER_LOG.test(name))
      .map(async (name) => ({file: path.join(runDir, name), mtime: (await fs.lstat(path.join(runDir, name))).mtimeMs})),
  );
  const newest = logs.filter((l) => l.mtime >= sinceMs - 1000).sort((a, b) => b.mtime - a.mtime)[0];
  const collected = newest ? await readNoFollow(newest.file) : undefined;
  if (collected?.trim()) sections.push(lastLines(collected, LOG_TAIL_LINES));
  return redactPasswords(sections.join('\n'));
}

function redactPasswords(text: string): string {
  return text.replace(/(PASSWORD\s+)'(?:[^']|'')*'/gi, "$1'[redacted]'");
}
