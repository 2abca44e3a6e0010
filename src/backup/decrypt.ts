import {promises as fs} from 'node:fs';
import path from 'node:path';
import {buffer} from 'node:stream/consumers';

import {recordOps, withOpsRecord} from '../audit/record.js';
import {loadConfigFile} from '../config/load.js';
import {operatorRegionOf, type DforgeConfig} from '../config/schema.js';
import type {ControlPlane} from '../control/plane.js';
import {checkRegion, recordCrossing, type CrossRegionApproval, type RegionCrossing} from '../residency/policy.js';
import {UsageError, UserError, VerificationError} from '../errors.js';
import {DataKeys, type DataKeyRecord, type DataKeyStore} from '../secrets/data-keys.js';
import type {KeyEncryptionService} from '../secrets/master-key.js';
import {writeFileStreamed} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {dataKeyWrapper, openHeader, type BackupHeader, type FileKeyWrapper} from './format.js';
import {hostTool, spawnTool} from './pg-tools.js';
import {authenticateBackup, checkDigest, decryptedDump, digestTap, fileSource, masterKeyWrapper, readBackupHeader, resolveSource, type AuthenticatedBackup, type BackupSource} from './verify.js';

export interface DecryptResult {
  readonly backupId: string;
  readonly kind: BackupHeader['kind'];
  readonly tenant: string;
  /** The plain pg_dump custom-format file written (mode 0600). */
  readonly out: string;
  readonly bytes: number;
  /** SHA-256 of the plain dump, as recorded in the ops log. */
  readonly sha256: string;
  /** With --from-control-backup: the control backup the data key came from. */
  readonly controlBackup?: string;
  /** False when the ops-log entry could not be written (no live dforge_control). */
  readonly opsLogWritten: boolean;
}

/**
 * Asked once the header is authenticated, so the operator confirms the backup that will actually
 * be decrypted; returns what was typed or passed (the backup id or the tenant is accepted).
 */
export type ConfirmDecrypt = (header: BackupHeader) => Promise<string>;

export interface DecryptOptions {
  readonly out: string;
  readonly confirm: ConfirmDecrypt;
  /** --allow-cross-region --reason: the plain dump may land outside the backup's region (see operatorRegionOf). */
  readonly approval?: CrossRegionApproval;
  readonly clock?: () => Date;
}

/**
 * `backup decrypt` with a live dforge_control: authenticated exactly like restore (header, catalog
 * entry, manifest, place, then every chunk and the file's digest), and only then is the plain dump
 * given its final name. The outcome, a tamper included, goes to the ops log.
 */
export async function decryptBackup(plane: ControlPlane, from: string, options: DecryptOptions): Promise<DecryptResult> {
  const out = await checkOut(options.out);
  const written = await withOpsRecord(plane, {action: 'backup.decrypt', target: `backup:${from}`, details: (r) => auditDetails(r)}, async () => {
    const auth = await authenticateBackup(plane, await resolveSource(plane, from));
    // Refused before the question; an approved crossing is recorded before the plain file exists.
    const crossing = checkRegion(plane.config, exportCrossing(plane.config, auth.header, from, options.out), options.approval);
    await requireConfirmation(auth.header, options.confirm);
    if (crossing) await recordCrossing(plane, plane.config, crossing);
    return writePlainDump(auth, out, (digest) => checkDigest(auth, digest));
  });
  return {...written, opsLogWritten: true};
}

/**
 * `backup decrypt --from-control-backup`: for when dforge_control is gone. The control backup is
 * authenticated and decrypted with the install's master key, the tenant's wrapped data keys are
 * read from its copy of dforge.data_keys (by pg_restore, which connects nowhere), and they open
 * the tenant backup file through the same DataKeys code as a live install. The ops-log entry is
 * written only if dforge_control happens to be reachable; `warn` says when it was not.
 */
export async function decryptWithControlBackup(
  deps: {readonly dir: InstallDir; readonly keyring: KeyEncryptionService; readonly warn: (text: string) => void},
  file: string,
  controlBackup: string,
  options: DecryptOptions,
): Promise<DecryptResult> {
  const out = await checkOut(options.out);
  const control = await authenticateFile(path.resolve(controlBackup), (h) => {
    if (h.kind !== 'control') throw new UserError(`${controlBackup} is a tenant backup of ${h.tenant}, not a control backup`, {nextSteps: ['Control backups are under _control/ in a destination; pass one of those.']});
    return Promise.resolve(masterKeyWrapper(deps.keyring, h.keyVersion));
  });
  const dataKeys = new DataKeys(new RecordedDataKeys(await recordedDataKeys(control)), deps.keyring);
  const auth = await authenticateFile(path.resolve(file), async (h) => {
    if (h.kind === 'control') return masterKeyWrapper(deps.keyring, h.keyVersion);
    try {
      return dataKeyWrapper(await dataKeys.get(h.tenant, h.keyVersion));
    } catch (err) {
      throw new VerificationError(`${file} cannot be decrypted: control backup ${control.header.backupId} has no data key ${h.keyId} v${h.keyVersion}`, {
        nextSteps: ['Use a control backup taken after that key version was created (and before the tenant was shredded), or another backup of the tenant.'],
        data: {reason: 'key-missing', keyId: h.keyId, keyVersion: h.keyVersion},
        cause: err,
      });
    }
  });
  // As with a live dforge_control, except that an approved crossing needs it reachable: an
  // exception that cannot be written to the ops log is not taken (recordCrossing fails closed).
  const config = await loadConfigFile(deps.dir.configFile);
  const crossing = checkRegion(config, exportCrossing(config, auth.header, `${file} --from-control-backup ${controlBackup}`, options.out), options.approval);
  await requireConfirmation(auth.header, options.confirm);
  if (crossing) await recordCrossing(deps.dir, config, crossing);
  const written = await writePlainDump(auth, out, () => undefined);
  const entry = await recordOps(deps.dir, {action: 'backup.decrypt', target: `backup:${auth.header.backupId}`, outcome: 'ok', details: {...auditDetails(written), controlBackup: control.header.backupId}}, (options.clock ?? (() => new Date()))());
  if (!entry) deps.warn(`the ops-log entry for this decrypt could not be written: dforge_control is not reachable. Record by hand that ${written.out} (sha256 ${written.sha256}) was written from backup ${written.backupId}.`);
  return {...written, controlBackup: control.header.backupId, opsLogWritten: entry !== undefined};
}

/**
 * The plain dump is written on this host, in the operator's region; the backup's data is of the
 * region its authenticated header names. A control backup holds only global data: no crossing.
 * `source` is the command's arguments naming the backup (and the control backup the key came from).
 */
function exportCrossing(config: DforgeConfig, header: BackupHeader, source: string, out: string): RegionCrossing {
  const to = header.kind === 'control' ? header.region : operatorRegionOf(config);
  return {tenant: header.tenant, from: header.region, to, operation: 'export', what: `decrypt of backup ${header.backupId} to ${path.resolve(out)}`, rerun: `dforge backup decrypt ${source} --out ${out} --confirm ${header.backupId}`};
}

/** What the ops log keeps of a decrypt: where the plaintext went and what it was, never data. */
function auditDetails(r: Omit<DecryptResult, 'opsLogWritten'>): Record<string, unknown> {
  return {backupId: r.backupId, tenant: r.tenant, out: r.out, bytes: r.bytes, sha256: r.sha256};
}

async function requireConfirmation(header: BackupHeader, confirm: ConfirmDecrypt): Promise<void> {
  const answer = await confirm(header);
  if (answer !== header.backupId && answer !== header.tenant) {
    throw new UsageError(`confirmation "${answer}" is neither backup ${header.backupId} nor tenant ${header.tenant}; nothing was written`, {nextSteps: [`Re-run with --confirm ${header.backupId}`]});
  }
}

/** The output path, absolute; an existing file is never replaced (it may be another dump, or not a dump). */
async function checkOut(out: string): Promise<string> {
  const file = path.resolve(out);
  if (await fs.lstat(file).then(() => true, () => false)) {
    throw new UserError(`${file} already exists; backup decrypt never overwrites a file`, {nextSteps: ['Name a new file with --out, or move the existing one away.']});
  }
  return file;
}

/** Authenticates a file's header with the wrapper its (parsed, not yet trusted) header asks for. */
async function authenticateFile(file: string, wrapperFor: (header: BackupHeader) => Promise<FileKeyWrapper>): Promise<AuthenticatedBackup> {
  if (!(await fs.stat(file).then((s) => s.isFile(), () => false))) throw new UserError(`no file at ${file}`, {nextSteps: ['Name a .dfb backup file.']});
  const source: BackupSource = fileSource(file);
  const parsed = await readBackupHeader(source);
  // parseHeader has bound the key id to kind and tenant, so an edited header cannot pick the key.
  const payloadKey = await openHeader(parsed, await wrapperFor(parsed.header), source.label);
  return {source, parsed, header: parsed.header, payloadKey};
}

/**
 * Decrypts the whole backup into `out` (0600) through writeFileStreamed, authenticating every
 * chunk, then runs `check` on the raw file's digest; only then does the file get its name, by
 * link, which refuses a name that appeared meanwhile. Any failure leaves nothing behind, so a
 * tampered backup writes nothing.
 */
async function writePlainDump(auth: AuthenticatedBackup, out: string, check: (digest: {size: number; sha256: string}) => void): Promise<Omit<DecryptResult, 'opsLogWritten'>> {
  const {bytes, sha256} = await writeFileStreamed(
    out,
    async (write) => {
      const {tap, digest} = digestTap();
      for await (const chunk of await decryptedDump(auth, tap)) await write(chunk as Buffer);
      check(digest());
    },
    {mode: 0o600, exclusive: true},
  ).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EEXIST') throw new UserError(`${out} appeared while decrypting; it was left alone`, {nextSteps: ['Name a new file with --out.']});
    throw err;
  });
  const h = auth.header;
  return {backupId: h.backupId, kind: h.kind, tenant: h.tenant, out, bytes, sha256};
}

/**
 * The wrapped data keys in a control backup's copy of dforge.data_keys. The whole dump is
 * decrypted (every chunk authenticated) before pg_restore sees a byte of it, so a key is never
 * read from a backup that fails halfway.
 */
async function recordedDataKeys(control: AuthenticatedBackup): Promise<DataKeyRecord[]> {
  const dump = await buffer(await decryptedDump(control));
  const tool = spawnTool(hostTool('pg_restore', Math.floor(Number(control.header.pgVersion) / 10_000)), ['--data-only', '--schema=dforge', '--table=data_keys', '--file=-'], {PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C'});
  let sql = '';
  tool.stdout.on('data', (c: Buffer) => (sql += c.toString()));
  tool.stdin.end(dump);
  await tool.done;
  return parseDataKeysCopy(sql, control.source.label);
}

/** The rows of `COPY dforge.data_keys (...) FROM stdin;` in pg_restore's SQL output (COPY text format). */
export function parseDataKeysCopy(sql: string, what: string): DataKeyRecord[] {
  const lines = sql.split('\n');
  const start = lines.findIndex((l) => l.startsWith('COPY dforge.data_keys ('));
  if (start < 0) throw new VerificationError(`${what} holds no dforge.data_keys table`, {nextSteps: ['It is not a dforge control backup; use one from _control/ in a destination.'], data: {reason: 'no-data-keys'}});
  const columns = /\(([^)]*)\)/.exec(lines[start]!)![1]!.split(',').map((c) => c.trim());
  const records: DataKeyRecord[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line === '\\.') return records;
    const fields = line.split('\t').map(copyText);
    const row = Object.fromEntries(columns.map((c, i) => [c, fields[i]]));
    if (!row.owner || !row.version || !row.state || !row.wrapped?.startsWith('\\x')) throw new VerificationError(`${what} has an unreadable dforge.data_keys row`, {nextSteps: ['Use another control backup.'], data: {reason: 'no-data-keys'}});
    records.push({owner: row.owner, version: Number(row.version), state: row.state as DataKeyRecord['state'], createdAt: row.created_at ?? '', wrapped: Buffer.from(row.wrapped.slice(2), 'hex')});
  }
  throw new VerificationError(`${what}: the dforge.data_keys data is cut short`, {nextSteps: ['Use another control backup.'], data: {reason: 'no-data-keys'}});
}

/** One field of COPY text format: backslash escapes undone; \N (NULL) becomes undefined. */
function copyText(field: string): string | undefined {
  if (field === '\\N') return undefined;
  const simple: Record<string, string> = {b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v'};
  return field.replace(/\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)/g, (_m, e: string) => {
    if (e[0] === 'x' && e.length > 1) return String.fromCharCode(parseInt(e.slice(1), 16));
    if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
    return simple[e] ?? e;
  });
}

const readOnly = (): UserError => new UserError('the data keys of a control backup are read-only', {nextSteps: ['Change keys on a live install.']});

/** The data keys a control backup recorded, as a read-only DataKeyStore for DataKeys.get. */
class RecordedDataKeys implements DataKeyStore {
  constructor(private readonly records: readonly DataKeyRecord[]) {}

  async list(owner?: string): Promise<DataKeyRecord[]> {
    return this.records.filter((r) => owner === undefined || r.owner === owner);
  }

  async replace(): Promise<void> {
    throw readOnly();
  }

  async removeOwner(): Promise<number> {
    throw readOnly();
  }

  async removeVersions(): Promise<number[]> {
    throw readOnly();
  }
}
