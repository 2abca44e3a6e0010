import {appendFileSync} from 'node:fs';

/**
 * Deterministic crash points, so tests can kill a multi-step operation at each durable step
 * instead of at random times (most of which land in Node's start-up).
 *
 * Every step that makes something durable (a file replaced, a transaction committed, a database
 * created or renamed) calls crashPoint() right after it. Two environment variables drive them:
 *  - DFORGE_CRASH_TRACE=<file>: append "<k>\t<step>" for each point reached, k counting from 1;
 *  - DFORGE_CRASH_AT=<k>: SIGKILL this process at the k-th point it reaches.
 * Without them a crash point costs one environment lookup. SIGKILL (not exit) because that is
 * the crash being simulated: no finally blocks, no exit handlers, no flushing.
 */

let reached = 0;

export function crashPoint(step: string): void {
  const trace = process.env.DFORGE_CRASH_TRACE;
  const at = process.env.DFORGE_CRASH_AT;
  if (trace === undefined && at === undefined) return;
  reached++;
  if (trace) appendFileSync(trace, `${reached}\t${step}\n`);
  if (at !== undefined && Number(at) === reached) process.kill(process.pid, 'SIGKILL');
}
