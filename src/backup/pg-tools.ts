import {spawn} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import path from 'node:path';
import type {Readable, Writable} from 'node:stream';

import {UserError} from '../errors.js';
import type {ClusterEndpoint} from '../postgres/connect.js';
import {findPostgresBinaries, pgToolPath} from '../postgres/binaries.js';
import type {InstallDir} from '../state/install-dir.js';
import {onTermination} from '../util/termination.js';
import {openCredentialDir} from './credential-dir.js';
import {pgpassField} from '../postgres/pgpass.js';

/**
 * Runs libpq tools (pg_dump, pg_restore) against a cluster over verified TLS 1.3. The password goes
 * through a 0600 passfile that exists only while the tool runs: never argv, never the environment.
 * It is in a private directory of the install (see credential-dir.ts), never in the temp directory.
 */
export interface LibpqSession {
  readonly env: NodeJS.ProcessEnv;
  close(): Promise<void>;
}

export async function libpqSession(dir: InstallDir, endpoint: ClusterEndpoint, credentials: {user: string; password: string; database: string}): Promise<LibpqSession> {
  const files = await openCredentialDir(dir);
  let passfile: string;
  let ca: string;
  try {
    passfile = await files.write('pgpass', `${pgpassField(endpoint.host)}:${endpoint.port}:*:${pgpassField(credentials.user)}:${pgpassField(credentials.password)}\n`);
    ca = await files.write('ca.pem', endpoint.caPem);
  } catch (err) {
    await files.remove();
    throw err;
  }
  return {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      LC_ALL: 'C',
      PGHOST: endpoint.host,
      PGPORT: String(endpoint.port),
      PGUSER: credentials.user,
      PGDATABASE: credentials.database,
      PGPASSFILE: passfile,
      PGSSLMODE: 'verify-full',
      PGSSLROOTCERT: ca,
      PGSSLMINPROTOCOLVERSION: 'TLSv1.3',
      PGAPPNAME: `dforge-${randomBytes(3).toString('hex')}`,
      PGCONNECT_TIMEOUT: '10',
      // A tool's own temporary files (restore's -L list, see pg-tool-runner.ts) stay in the private
      // session directory too, and go with it on close, on a signal or in the next run's sweep.
      TMPDIR: files.path,
    },
    close: () => files.remove(),
  };
}

/** The host's pg_dump/pg_restore, refusing a major version older than the server (it cannot dump newer servers). */
export function hostTool(tool: 'pg_dump' | 'pg_restore', serverMajor: number): string {
  const bins = findPostgresBinaries();
  if (bins.majorVersion < serverMajor) {
    throw new UserError(`the host's ${tool} is PostgreSQL ${bins.majorVersion}, older than the server (${serverMajor})`, {
      nextSteps: [`Install the client of version ${serverMajor} or newer: apt-get install postgresql-client-${serverMajor} (or dnf install postgresql${serverMajor}).`],
    });
  }
  return pgToolPath(bins, tool);
}

/** A running pg tool, on the host or inside a container: what the backup and restore streams need. */
export interface ToolProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  /** Resolves when the tool exits 0; rejects with what it said otherwise. */
  readonly done: Promise<void>;
  /** Stops the tool at once (its input failed verification); `done` then rejects. */
  kill(): void;
}

/** Spawns a tool and collects its stderr, for an error that says what the tool said. */
export function spawnTool(binary: string, args: string[], env: NodeJS.ProcessEnv, label = path.basename(binary)): ToolProcess {
  const child = spawn(binary, args, {env, stdio: ['pipe', 'pipe', 'pipe']});
  // Told to stop, dforge stops its tool too (pg_dump and pg_restore then cancel their query),
  // rather than leave it running as an orphan, holding its snapshot and locks until its pipe breaks.
  const forget = onTermination((signal) => child.kill(signal ?? 'SIGTERM'));
  child.once('exit', forget);
  child.once('error', forget);
  // A tool that exits early (or is killed because its input failed verification) closes its stdin
  // under a pending write; that EPIPE is reported through the exit status, not as a crash.
  child.stdin.on('error', () => undefined);
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    if (stderr.length < 8192) stderr += c.toString();
  });
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new UserError(`${label} failed (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').slice(-3).join(' / ') || 'no message'}`, {nextSteps: ['Check the server log of the cluster, and that the tenant role can connect (dforge tenant show).']}));
    });
  });
  return {stdin: child.stdin, stdout: child.stdout, done, kill: () => child.kill('SIGKILL')};
}

/** The TOC of a custom-format dump as pg_restore --list prints it: entry counts per object type. */
export function tocCounts(list: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of list.split('\n')) {
    // "<id>; <oid> <oid> <TYPE> <schema> <name> <owner>", comments start with ';'. Longer type
    // names come first, so SEQUENCE OWNED BY is not counted as a SEQUENCE.
    const match = /^\d+;\s+\d+\s+\d+\s+(TABLE DATA|SEQUENCE SET|SEQUENCE OWNED BY|FK CONSTRAINT|MATERIALIZED VIEW DATA|MATERIALIZED VIEW|BLOBS|BLOB|INDEX|TABLE|SEQUENCE|FUNCTION|SCHEMA|VIEW|TRIGGER|CONSTRAINT|DEFAULT)\s/.exec(line);
    if (match) counts.set(match[1]!, (counts.get(match[1]!) ?? 0) + 1);
  }
  return counts;
}

/**
 * pg_dump's arguments for a backup or a tenant move: the custom format, never a password prompt.
 * A tenant dump leaves out the template's change-log guard functions (schema dforge_guard): they
 * are dforge's, and every database cloned from the template has them already. Its event triggers
 * can't be left out by pg_dump; restore skips them (see restorableEntries).
 */
export function pgDumpArgs(kind: 'tenant' | 'control'): string[] {
  return ['--format=custom', '--no-password', ...(kind === 'tenant' ? ['--exclude-schema=dforge_guard'] : [])];
}

/**
 * The entries of a tenant dump that its restore role loads. Left out, because the scratch database
 * has them already, owned by the tenant's owner role (so code the dump carries never holds the
 * audit trail while it runs): the module and audit schemas, every object of the audit schema but
 * the change log's rows, and that table's sequence position (set afterwards by the owner). Left out
 * too: event triggers, which only a superuser may create; they are the template's change-log guard,
 * which every database cloned from the template has.
 */
export function restorableEntries(list: string, schemas: readonly string[]): string {
  const entry = /^\d+;\s+\d+\s+\d+\s+/;
  const ownSchema = new RegExp(`^\\d+;\\s+\\d+\\s+\\d+\\s+SCHEMA\\s+-\\s+(${[...schemas, 'audit'].join('|')})\\s`);
  const inAudit = /^\d+;\s+\d+\s+\d+\s+[A-Z][A-Z ]*?\s+audit\s/;
  const auditRows = /^\d+;\s+\d+\s+\d+\s+TABLE DATA\s+audit\s+change_log\s/;
  return list
    .split('\n')
    .filter((line) => !entry.test(line) || auditRows.test(line) || !(ownSchema.test(line) || inAudit.test(line) || /^\d+;\s+\d+\s+\d+\s+EVENT TRIGGER\s/.test(line)))
    .join('\n');
}
