import {execFile} from 'node:child_process';
import {constants, promises as fs} from 'node:fs';
import path from 'node:path';

import type {DforgeConfig} from '../config/schema.js';
import {DforgeError, UserError} from '../errors.js';
import {findPostgresBinaries, type PostgresBinaries} from '../postgres/binaries.js';
import {untraversable, unreachableError} from '../postgres/embedded-process.js';
import {embeddedCluster, embeddedClusterNames} from '../postgres/embedded-install.js';
import {serverAccount} from '../postgres/service-account.js';
import type {InstallDir} from '../state/install-dir.js';
import {formatBytes} from '../ui/bytes.js';
import {probePort} from './checks/ports.js';
import {HOST_THRESHOLDS, meets} from './thresholds.js';

export interface EmbeddedSite {
  readonly bins: PostgresBinaries;
  readonly freeBytes: number;
}

interface Problem {
  readonly problem: string;
  readonly remedy: string;
}

// How far past a taken port to look for a free one to suggest.
const PORT_SUGGESTION_RANGE = 20;

/**
 * Everything that would make an embedded install fail part-way, checked before it writes
 * anything (dforge.yaml, keys, PKI): the server binaries, a writable install directory with room,
 * a path PostgreSQL accepts (no spaces, a short enough socket path), a directory chain the
 * server account can traverse, and free ports. Every problem found is reported at once, in one
 * UserError, so a re-run is the last one. Creates nothing in the install directory.
 */
export async function checkEmbeddedSite(dir: InstallDir, config: DforgeConfig, options: {minFreeBytes?: number} = {}): Promise<EmbeddedSite> {
  const problems: Problem[] = [];
  let bins: PostgresBinaries | undefined;
  try {
    bins = findPostgresBinaries();
  } catch (err) {
    problems.push(asProblem(err));
  }

  const root = path.resolve(dir.root);
  const existing = await existingPrefix(root);
  const writable = await writeProblem(root, existing);
  if (writable) problems.push(writable);
  let freeBytes = 0;
  const st = await fs.statfs(existing).catch(() => undefined);
  if (st) {
    freeBytes = st.bavail * st.bsize;
    const minFree = options.minFreeBytes ?? HOST_THRESHOLDS.embedded.minFreeBytes;
    if (!meets(freeBytes, minFree)) problems.push({problem: `only ${formatBytes(freeBytes)} free at ${existing}; this install needs ${formatBytes(minFree)}`, remedy: 'Free space there, or pass --dir on a larger file system.'});
  }

  const account = serverAccount();
  if (account) {
    const blocked = await untraversable(account, [existing]);
    if (blocked !== undefined) problems.push(asProblem(unreachableError(account, blocked)));
  }

  for (const name of bins ? embeddedClusterNames(config) : []) {
    let pg;
    try {
      // The constructor refuses what PostgreSQL cannot take: spaces or quotes in the path, a socket path over 107 bytes.
      pg = embeddedCluster(dir, config, name);
    } catch (err) {
      problems.push(asProblem(err));
      continue;
    }
    for (const host of pg.listenAddresses) {
      const probe = await probePort(host, pg.port);
      if (probe.free) continue;
      // This install's own server already listening there is not a conflict: the re-run keeps it.
      const status = await pg.status().catch(() => undefined);
      if (probe.code === 'EADDRINUSE' && status?.running && status.port === pg.port) continue;
      const inUse = probe.code === 'EADDRINUSE';
      const suggestion = inUse ? await freePortAfter(host, pg.port) : undefined;
      const holder = inUse ? await portHolder(pg.port) : undefined;
      problems.push({
        problem: `port ${pg.port} on ${host} (cluster ${name}) is ${inUse ? `already in use${holder ? ` by ${holder}` : ''}` : `not available (${probe.code})`}`,
        remedy: `See what holds it with: ss -ltnp 'sport = :${pg.port}'; free it, or choose another port with --port${suggestion ? ` (${suggestion} is free)` : ''}.`,
      });
    }
  }

  if (problems.length > 0 || bins === undefined) {
    const summary = problems.map((p, i) => `${problems.length > 1 ? `${i + 1}. ` : ''}${p.problem}`).join('\n');
    throw new UserError(`nothing was written to ${root}: ${problems.length > 1 ? `${problems.length} problems\n` : ''}${summary}`, {
      nextSteps: problems.map((p) => p.remedy),
      data: {dir: root, problems},
    });
  }
  return {bins, freeBytes};
}

function asProblem(err: unknown): Problem {
  if (err instanceof DforgeError) return {problem: err.message, remedy: err.nextSteps.join(' ')};
  throw err;
}

/** The longest prefix of `file` that exists (unresolved: the kernel follows symlinks when the server traverses it). */
async function existingPrefix(file: string): Promise<string> {
  for (let current = file; ; current = path.dirname(current)) {
    if (await fs.stat(current).then(() => true, () => false)) return current;
    if (current === path.dirname(current)) return current;
  }
}

/** Why dforge could not create or write the install directory, tested where it would write first. */
async function writeProblem(root: string, existing: string): Promise<Problem | undefined> {
  const st = await fs.stat(existing);
  if (!st.isDirectory()) return {problem: `${existing} is not a directory`, remedy: `Choose an install directory (--dir) that is a directory or does not exist yet; ${root} cannot be created under a file.`};
  try {
    await fs.access(existing, constants.W_OK | constants.X_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const what = existing === root ? root : `${existing} (where ${root} would be created)`;
    if (code === 'EROFS') return {problem: `${what} is on a read-only file system`, remedy: 'Pass --dir on a writable file system (the default is /opt/dforge), or remount it read-write.'};
    return {problem: `cannot write to ${what} (${code ?? 'denied'})`, remedy: `Run as a user that may write there (root, usually), or pass --dir to a writable directory.`};
  }
}

/** Who listens on `port`, as ss names it ("postgres (pid 812)"); undefined when ss is missing or does not say. */
function portHolder(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile('ss', ['-ltnpH', `sport = :${port}`], {timeout: 3000, env: {PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C'}}, (err, stdout) => {
      const match = err ? null : /users:\(\("([^"]+)",pid=(\d+)/.exec(stdout);
      resolve(match ? `${match[1]} (pid ${match[2]})` : undefined);
    });
  });
}

async function freePortAfter(host: string, port: number): Promise<number | undefined> {
  for (let candidate = port + 1; candidate <= Math.min(65_535, port + PORT_SUGGESTION_RANGE); candidate++) {
    if ((await probePort(host, candidate)).free) return candidate;
  }
  return undefined;
}
