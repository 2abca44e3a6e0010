import {createHash} from 'node:crypto';
import {once} from 'node:events';
import {createReadStream, promises as fs} from 'node:fs';
import path from 'node:path';
import {Transform, type Readable} from 'node:stream';

import type {ControlPlane} from '../control/plane.js';
import type {KeyEncryptionService} from '../secrets/master-key.js';
import {PartialError, UserError, VerificationError} from '../errors.js';
import {dataKeyWrapper, parseHeader, openHeader, DecryptStream, type BackupHeader, type FileKeyWrapper, type ParsedHeader} from './format.js';
import {BackupCatalog, backupLocation, manifestLocation, type BackupManifest, type BackupRecord} from './catalog.js';
import type {BackupDestination} from './backup-destination.js';
import {regionDestinations} from './destination.js';
import {startPgRestoreList} from './pg-tool-runner.js';
import {tocCounts, type ToolProcess} from './pg-tools.js';

/** A backup to read: from the catalog (by id) or a file an operator points at. */
export interface BackupSource {
  readonly label: string;
  /** The catalog entry, when the backup was named by id. */
  readonly record?: BackupRecord;
  /** Where the file sits, when it sits in a configured destination. */
  readonly placement?: {readonly destination: string; readonly region: string; readonly location: string};
  open(): Promise<Readable>;
  manifest(): Promise<BackupManifest | undefined>;
}

/** A file in a destination as a source; its manifest is the sidecar next to it. */
export function destinationSource(destination: BackupDestination, location: string, record?: BackupRecord): BackupSource {
  return {
    label: record ? `backup ${record.id}` : `backup file ${destination.describe(location)}`,
    ...(record ? {record} : {}),
    placement: {destination: destination.name, region: destination.region, location},
    open: () => destination.get(location),
    manifest: async () => {
      const text = await destination.readSmall(manifestLocation(location)).catch(() => undefined);
      return text === undefined ? undefined : parseManifest(text, destination.describe(manifestLocation(location)));
    },
  };
}

function parseManifest(text: string, where: string): BackupManifest {
  try {
    return JSON.parse(text) as BackupManifest;
  } catch {
    throw new VerificationError(`the manifest ${where} is not readable JSON`, {nextSteps: ['It was edited or damaged; check the backup with: dforge backup verify <file> --deep'], data: {reason: 'manifest-unreadable'}});
  }
}

export async function resolveSource(plane: ControlPlane, from: string): Promise<BackupSource> {
  const record = await new BackupCatalog(plane.control).get(from);
  if (record) {
    const destination = regionDestinations(plane, record.region).find((d) => d.name === record.destination);
    if (!destination) throw new UserError(`backup ${from} is in destination ${record.destination}, which dforge.yaml no longer declares`, {nextSteps: ['Declare the destination again, or restore from the file: --from <path>']});
    // The catalog promises a complete file at its location: its absence is a failed verification.
    if ((await destination.size(record.location).catch(() => -1)) < 0) {
      throw new VerificationError(`the catalog lists backup ${record.id} at ${destination.describe(record.location)}, but there is no file there`, {
        nextSteps: ['The file was removed outside dforge. Take a fresh backup: dforge backup --tenant <slug>; then dforge backup prune'],
        data: {backupId: record.id, reason: 'missing'},
      });
    }
    return destinationSource(destination, record.location, record);
  }
  // An object URL (s3://bucket/key) is a place in a declared destination, never a path here.
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(from)) {
    for (const region of Object.keys(plane.config.regions)) {
      for (const destination of regionDestinations(plane, region)) {
        const location = destination.locate(from);
        if (location !== undefined) return destinationSource(destination, location);
      }
    }
    throw new UserError(`no declared backup destination holds ${from}`, {nextSteps: ['List backups with: dforge backup list (give its id), or declare the destination in dforge.yaml']});
  }
  const file = path.resolve(from);
  if (!(await fs.stat(file).then((s) => s.isFile(), () => false))) {
    throw new UserError(`no backup with id ${from} in the catalog, and no file at ${file}`, {nextSteps: ['List backups with: dforge backup list']});
  }
  for (const region of Object.keys(plane.config.regions)) {
    for (const destination of regionDestinations(plane, region)) {
      const location = destination.locate(file);
      if (location !== undefined) return destinationSource(destination, location);
    }
  }
  return fileSource(file);
}

/** A file on this machine outside every destination; its manifest is the sidecar next to it. */
export function fileSource(file: string): BackupSource {
  return {
    label: `backup file ${file}`,
    open: async () => createReadStream(file, {highWaterMark: 256 * 1024}),
    manifest: async () => {
      const text = await fs.readFile(manifestLocation(file), 'utf8').catch(() => undefined);
      return text === undefined ? undefined : parseManifest(text, manifestLocation(file));
    },
  };
}

/** Reads just the header (it is small and at the start of the file). */
export async function readBackupHeader(source: BackupSource): Promise<ParsedHeader> {
  const stream = await source.open();
  let buffered = Buffer.alloc(0);
  for await (const chunk of stream) {
    buffered = Buffer.concat([buffered, chunk as Buffer]);
    if (buffered.length >= 128 * 1024) break;
  }
  stream.destroy();
  return parseHeader(buffered, source.label);
}

/** Whose backup an object is, read from its authenticated header, never from its name or location. */
export type AttributedObject =
  | {readonly kind: 'control'}
  | {readonly kind: 'tenant'; readonly tenant: string; readonly region: string}
  /** A shredded tenant's backup: its key is gone by design, so it can't be attributed (not forged). */
  | {readonly kind: 'unattributable'; readonly reason: string}
  /** It doesn't authenticate as a dforge backup: its owner and region are unknown. */
  | {readonly kind: 'unauthentic'; readonly reason: string};

/**
 * Opens an object's header with the key it names (`wrapperOf`, so a caller can serialise the
 * control-database reads) and says whose backup it is. Any failure other than verification
 * (an unreadable destination) is thrown.
 */
export async function attributeObject(destination: BackupDestination, location: string, wrapperOf: (parsed: ParsedHeader, label: string) => Promise<FileKeyWrapper>): Promise<AttributedObject> {
  const source = destinationSource(destination, location);
  try {
    const parsed = await readBackupHeader(source);
    await openHeader(parsed, await wrapperOf(parsed, source.label), source.label);
    const h = parsed.header;
    return h.kind === 'control' ? {kind: 'control'} : {kind: 'tenant', tenant: h.tenant, region: h.region};
  } catch (err) {
    if (!(err instanceof VerificationError)) throw err;
    return err.data.reason === 'key-missing' ? {kind: 'unattributable', reason: err.message} : {kind: 'unauthentic', reason: err.message};
  }
}

/**
 * The key that opens a backup: the tenant's data key of the header's version, or the master key.
 * parseHeader has already required the key id to agree with kind and tenant, and with the wrapped
 * file key's own header, so one edited byte cannot steer this lookup to a key that does not exist.
 */
export async function wrapperFor(plane: ControlPlane, parsed: ParsedHeader, label: string): Promise<FileKeyWrapper> {
  const h = parsed.header;
  if (h.kind === 'control') return masterKeyWrapper(plane.keys.keyring, h.keyVersion);
  try {
    return dataKeyWrapper(await plane.dataKeys.get(h.tenant, h.keyVersion));
  } catch (err) {
    if (err instanceof VerificationError) throw err;
    throw new VerificationError(`${label} cannot be decrypted: data key ${h.keyId} v${h.keyVersion} does not exist (the tenant's keys were shredded, or this is another install's backup)`, {
      nextSteps: ['Nothing was restored. A shredded tenant\'s backups are unreadable by design; use a backup of a tenant whose keys exist.'],
      data: {reason: 'key-missing', keyId: h.keyId, keyVersion: h.keyVersion},
      cause: err,
    });
  }
}

/** The master key of a version as a backup's file-key wrapper: what opens a control backup. */
export function masterKeyWrapper(keyring: KeyEncryptionService, keyVersion: number): FileKeyWrapper {
  const recorded = keyring.state.versions.find((v) => v.version === keyVersion);
  return {
    keyId: keyring.keyId,
    keyVersion,
    ...(recorded ? {keyCheck: Buffer.from(recorded.keyCheck, 'hex')} : {}),
    wrap: (k, c) => keyring.wrap(k, c),
    unwrap: (w, c, what) => keyring.unwrap(w, c, what),
  };
}

/** The header fields a catalog entry or a manifest repeats, which must equal the authenticated ones. */
const BOUND_FIELDS = ['kind', 'tenant', 'region', 'cluster', 'pgVersion', 'keyId', 'keyVersion'] as const;

function bindingMismatch(header: BackupHeader, claimed: {readonly id?: string; readonly backupId?: string; readonly createdAt: string} & Pick<BackupHeader, (typeof BOUND_FIELDS)[number]>): string | undefined {
  const id = claimed.id ?? claimed.backupId;
  if (id !== header.backupId) return `backup id ${String(id)} (the file is ${header.backupId})`;
  for (const f of BOUND_FIELDS) if (claimed[f] !== header[f]) return `${f} ${String(claimed[f])} (the file says ${String(header[f])})`;
  if (Date.parse(claimed.createdAt) !== Date.parse(header.createdAt)) return `creation time ${claimed.createdAt} (the file says ${header.createdAt})`;
  return undefined;
}

/** A backup whose header was authenticated and found to match everything that describes it. */
export interface AuthenticatedBackup {
  readonly source: BackupSource;
  readonly parsed: ParsedHeader;
  /** Authenticated: the only header fields anything may be decided on. */
  readonly header: BackupHeader;
  readonly payloadKey: Buffer;
  readonly manifest?: BackupManifest;
  /** The catalog entry of the header's backup id, if the catalog has one. */
  readonly record?: BackupRecord;
}

/**
 * Authenticates a backup's header before anything is decided on it, then requires the catalog
 * entry (by id, or the one of the header's id), the manifest and the file's place in its
 * destination to describe exactly that backup. A foreign file under another id, an older file in
 * place of a newer one, or a manifest edited to fit all fail here, with exit 6.
 */
export async function authenticateBackup(plane: ControlPlane, source: BackupSource): Promise<AuthenticatedBackup> {
  const parsed = await readBackupHeader(source);
  const payloadKey = await openHeader(parsed, await wrapperFor(plane, parsed, source.label), source.label);
  const header = parsed.header;
  const fail = (what: string, why: string): never => {
    throw new VerificationError(`${source.label} is not the backup its ${what} describes: the ${what} says ${why}`, {
      nextSteps: ['The file was replaced or copied from elsewhere; nothing was read from it. Use another backup (dforge backup list).'],
      data: {reason: 'binding', binding: what, backupId: header.backupId, tenant: header.tenant},
    });
  };
  const record = source.record ?? (await new BackupCatalog(plane.control).get(header.backupId));
  if (record) {
    const mismatch = bindingMismatch(header, record);
    if (mismatch) fail('catalog entry', mismatch);
    if (record.location !== backupLocation(header)) fail('catalog entry', `location ${record.location} (expected ${backupLocation(header)})`);
  }
  if (source.placement) {
    if (source.placement.location !== backupLocation(header)) fail('place in the destination', `${source.placement.location} (a backup ${header.backupId} lives at ${backupLocation(header)})`);
    if (source.placement.region !== header.region) fail('place in the destination', `region ${source.placement.region} (the file is of region ${header.region})`);
  }
  const manifest = await source.manifest();
  if (manifest) {
    const mismatch = bindingMismatch(header, manifest);
    if (mismatch) fail('manifest', mismatch);
    if (manifest.location !== backupLocation(header)) fail('manifest', `location ${manifest.location} (expected ${backupLocation(header)})`);
    if (source.placement && manifest.destination !== source.placement.destination) fail('manifest', `destination ${manifest.destination} (the file is in ${source.placement.destination})`);
  }
  return {source, parsed, header, payloadKey, ...(manifest ? {manifest} : {}), ...(record ? {record} : {})};
}

/** Size and SHA-256 of the file as read, for comparison with the catalog and the manifest. */
export interface FileDigest {
  readonly size: number;
  readonly sha256: string;
}

/** Requires the file read to be the one the catalog entry (and the manifest) recorded. */
export function checkDigest(auth: AuthenticatedBackup, digest: FileDigest): void {
  for (const [what, expected] of [
    ['catalog entry', auth.record],
    ['manifest', auth.manifest],
  ] as const) {
    if (!expected) continue;
    if (expected.size !== digest.size || expected.sha256 !== digest.sha256) {
      throw new VerificationError(`${auth.source.label} failed its integrity check: it is ${digest.size} bytes with another SHA-256 than its ${what} records (${expected.size} bytes)`, {
        nextSteps: ['The file was modified or damaged. Use another backup (dforge backup list).'],
        data: {reason: 'digest', binding: what, backupId: auth.header.backupId},
      });
    }
  }
}

/** Hashes the raw file as it streams past (for checkDigest). */
export function digestTap(): {tap: Transform; digest: () => FileDigest} {
  const hash = createHash('sha256');
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      size += chunk.length;
      done(null, chunk);
    },
  });
  return {tap, digest: () => ({size, sha256: hash.digest('hex')})};
}

/** Reads the whole file once: its digest, and with `decrypt` every chunk authenticated. */
export async function readWhole(auth: AuthenticatedBackup, options: {decrypt: boolean}): Promise<FileDigest> {
  const {tap, digest} = digestTap();
  const raw = (await auth.source.open()).pipe(tap);
  const stream = options.decrypt ? raw.pipe(skipBytes(auth.parsed.length)).pipe(new DecryptStream(auth.payloadKey, auth.source.label)) : raw;
  await new Promise<void>((resolve, reject) => {
    raw.on('error', reject);
    stream.on('error', reject);
    stream.on('end', resolve);
    stream.resume();
  });
  return digest();
}

/** A dump's table of contents: `pg_restore --list` as printed, and its entry counts per object type. */
export interface TableOfContents {
  readonly list: string;
  readonly counts: Map<string, number>;
  /** The file as read on the way: checked against the catalog entry and the manifest. */
  readonly digest: FileDigest;
}

/**
 * Decrypts the whole stream and feeds it to `pg_restore --list`, so every chunk is authenticated
 * and the dump's table of contents is read; the file's digest is checked on the same pass.
 */
export async function decryptAndList(plane: ControlPlane, auth: AuthenticatedBackup): Promise<TableOfContents> {
  const pgRestoreList = await startPgRestoreList(plane, Math.floor(Number(auth.header.pgVersion) / 10_000));
  const {done, stdin} = pgRestoreList;
  let list = '';
  pgRestoreList.stdout.on('data', (c: Buffer) => (list += c.toString()));
  let stdinOpen = true;
  stdin.on('close', () => (stdinOpen = false));
  stdin.on('error', () => (stdinOpen = false));
  // A tool that exits early (done, or failed) stops the feeding too; its status is read at the end.
  const exited = done.then(
    () => undefined,
    () => undefined,
  );
  void exited.then(() => (stdinOpen = false));
  const {tap, digest} = digestTap();
  const decrypted = await decryptedDump(auth, tap);
  try {
    // pg_restore --list stops reading after the table of contents; the rest of the stream is still
    // decrypted (and discarded), so every chunk is authenticated before anything is restored.
    for await (const chunk of decrypted) {
      // once() rejects on 'error' (EPIPE when pg_restore is done reading): that only means stop feeding.
      if (stdinOpen && !stdin.write(chunk)) await Promise.race([once(stdin, 'drain'), once(stdin, 'close'), exited]).catch(() => undefined);
    }
  } catch (err) {
    pgRestoreList.kill();
    await done.catch(() => undefined);
    throw err;
  }
  if (stdinOpen) stdin.end();
  await done;
  const toc = {list, counts: tocCounts(list), digest: digest()};
  checkDigest(auth, toc.digest);
  return toc;
}

/** The backup's plaintext dump, authenticated chunk by chunk as it streams. */
export async function decryptedDump(auth: AuthenticatedBackup, tap?: Transform): Promise<Readable> {
  const raw = await auth.source.open();
  return (tap ? raw.pipe(tap) : raw).pipe(skipBytes(auth.parsed.length)).pipe(new DecryptStream(auth.payloadKey, auth.source.label));
}

/** Streams the decrypted dump into a tool's stdin; a decryption failure kills the tool. */
export async function feedDecryptedDump(auth: AuthenticatedBackup, tool: ToolProcess): Promise<void> {
  const decrypted = await decryptedDump(auth);
  decrypted.on('error', () => tool.kill());
  decrypted.pipe(tool.stdin);
}

/** A transform that drops the first `n` bytes (the header) of a stream. */
function skipBytes(n: number): Transform {
  let remaining = n;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (remaining >= chunk.length) {
        remaining -= chunk.length;
        done();
      } else {
        const rest = chunk.subarray(remaining);
        remaining = 0;
        done(null, rest);
      }
    },
  });
}

/**
 * What a verification established, in order: the header authenticated and bound to the catalog
 * entry and manifest; the file's digest equal to the catalog's (a trusted record) or every chunk
 * decrypted (when there is no catalog entry, since a manifest is only as trustworthy as the
 * destination); with --deep, also the dump's table of contents read.
 */
export type VerifyCheck = 'header-authenticated' | 'bound-to-catalog' | 'bound-to-manifest' | 'digest-matches-catalog' | 'body-authenticated' | 'dump-readable';

export interface VerifyResult {
  readonly id: string;
  readonly kind: BackupHeader['kind'];
  readonly tenant: string;
  readonly region: string;
  readonly createdAt: string;
  readonly size: number;
  readonly sha256: string;
  readonly deep: boolean;
  readonly checks: VerifyCheck[];
  /** With --deep: object counts from the dump's table of contents. */
  readonly objects?: Record<string, number>;
}

/**
 * `backup verify`: never "ok" for bytes it did not authenticate. The header is always opened with
 * its key. A catalog backup's file must then hash to the catalog's digest; a file named by path
 * (whose manifest anyone who can write the destination can rewrite) has every chunk decrypted.
 * `deep` decrypts everything through pg_restore --list and marks a catalog backup verified.
 */
export async function verifyBackup(plane: ControlPlane, from: string, options: {deep: boolean; clock?: () => Date}): Promise<VerifyResult> {
  const auth = await authenticateBackup(plane, await resolveSource(plane, from));
  const checks: VerifyCheck[] = ['header-authenticated'];
  if (auth.record) checks.push('bound-to-catalog');
  if (auth.manifest) checks.push('bound-to-manifest');
  let objects: Record<string, number> | undefined;
  let digest: FileDigest;
  if (options.deep) {
    const toc = await decryptAndList(plane, auth);
    digest = toc.digest;
    objects = Object.fromEntries(toc.counts);
    checks.push(...(auth.record ? (['digest-matches-catalog'] as const) : []), 'body-authenticated', 'dump-readable');
    if (auth.record) await new BackupCatalog(plane.control).markVerified(auth.record.id, (options.clock ?? (() => new Date()))());
  } else {
    digest = await readWhole(auth, {decrypt: auth.record === undefined});
    checkDigest(auth, digest);
    checks.push(auth.record ? 'digest-matches-catalog' : 'body-authenticated');
  }
  const h = auth.header;
  return {id: h.backupId, kind: h.kind, tenant: h.tenant, region: h.region, createdAt: h.createdAt, size: digest.size, sha256: digest.sha256, deep: options.deep, checks, ...(objects ? {objects} : {})};
}

/** One catalog backup as `backup verify --all` found it. */
export interface VerifyLine {
  readonly id: string;
  readonly tenant: string;
  /** tampered: a VerificationError (exit 6); error: it could not be checked (exit 4). */
  readonly status: 'ok' | 'tampered' | 'error';
  readonly reason?: string;
  readonly result?: VerifyResult;
}

export interface VerifyAllResult {
  readonly backups: VerifyLine[];
  readonly ok: number;
  readonly tampered: number;
  readonly errors: number;
}

/**
 * Every catalog backup, one line each as it is checked, then a summary. Any tampered backup makes
 * the run a VerificationError (exit 6) carrying every line; otherwise one that could not be
 * checked makes it a PartialError (exit 4).
 */
export async function verifyAll(plane: ControlPlane, options: {deep: boolean; clock?: () => Date; report: (line: VerifyLine) => void; summary: (text: string) => void}): Promise<VerifyAllResult> {
  const lines: VerifyLine[] = [];
  for (const record of await new BackupCatalog(plane.control).list()) {
    let line: VerifyLine;
    try {
      line = {id: record.id, tenant: record.tenant, status: 'ok', result: await verifyBackup(plane, record.id, {deep: options.deep, clock: options.clock})};
    } catch (err) {
      line = {id: record.id, tenant: record.tenant, status: err instanceof VerificationError ? 'tampered' : 'error', reason: err instanceof Error ? err.message : String(err)};
    }
    options.report(line);
    lines.push(line);
  }
  const count = (status: VerifyLine['status']): number => lines.filter((l) => l.status === status).length;
  const result: VerifyAllResult = {backups: lines, ok: count('ok'), tampered: count('tampered'), errors: count('error')};
  const text = `verified ${lines.length} backup(s)${options.deep ? ' deep' : ''}: ${result.ok} ok, ${result.tampered} tampered, ${result.errors} not checked`;
  options.summary(text);
  const bad = lines.filter((l) => l.status !== 'ok').map((l) => l.id);
  if (result.tampered > 0) {
    throw new VerificationError(`${text}: ${bad.join(', ')}`, {
      nextSteps: ['Do not restore from the tampered backups. Take fresh backups of the affected tenants (dforge backup --tenant <slug>) and find out who can write to the destination.'],
      data: {...result},
    });
  }
  if (result.errors > 0) {
    throw new PartialError(`${text}: ${bad.join(', ')}`, {nextSteps: ['Fix what the named lines say (a destination, a key), then re-run.'], data: {...result}});
  }
  return result;
}
