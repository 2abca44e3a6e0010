/**
 * Synchronous cleanups that must run however the process ends: on SIGINT (Ctrl-C), SIGTERM (kill,
 * systemd, a container stop) and SIGHUP (a closed terminal), and on process.exit(). Node's default
 * for those signals is to die at once, skipping every `finally`; so while at least one cleanup is
 * registered, dforge listens for them, runs the cleanups, and then dies of the same signal, as it
 * would have without listening. With nothing registered, no listener is installed and the
 * defaults apply unchanged. SIGKILL cannot be caught: what it leaves is for the next run to sweep.
 */

export type Cleanup = (signal: NodeJS.Signals | undefined) => void;

const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Insertion-ordered; an entry object per registration, so one function may be registered twice. */
const cleanups = new Set<{readonly run: Cleanup}>();

/** Registers `cleanup`; the returned function unregisters it (call it once the thing is gone). */
export function onTermination(cleanup: Cleanup): () => void {
  const entry = {run: cleanup};
  if (cleanups.size === 0) listen();
  cleanups.add(entry);
  return () => {
    if (cleanups.delete(entry) && cleanups.size === 0) unlisten();
  };
}

function runAll(signal: NodeJS.Signals | undefined): void {
  const pending = [...cleanups];
  cleanups.clear();
  for (const entry of pending) {
    try {
      entry.run(signal);
    } catch {
      // One failed cleanup must not keep the others from running; the process is ending anyway.
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  runAll(signal);
  unlisten();
  // Without our listener the default action is back, so this ends the process by the signal
  // itself: a parent (a shell, cron, systemd) sees how it really ended. Should other code listen
  // for the signal too, the decision is left to it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function onExit(): void {
  runAll(undefined);
}

function listen(): void {
  for (const signal of SIGNALS) process.on(signal, onSignal);
  process.on('exit', onExit);
}

function unlisten(): void {
  for (const signal of SIGNALS) process.removeListener(signal, onSignal);
  process.removeListener('exit', onExit);
}
