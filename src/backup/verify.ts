import {createHash} from 'node:crypto';
import {once} from 'node:events';
import {createReadStream, promises as fs} from 'node:fs';
import path from 'node:path';
import {Transform, type Readable} from 'node:stream';

import type {ControlPlane} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import {dataKeyWrapper, parseHeader, openHeader, DecryptStream, type FileKeyWrapper, type ParsedHeader} from './format.js';
import {BackupCatalog, manifestLocation, type BackupManifest, type BackupRecord} from './catalog.js';
import {regionDestinations} from './service.js';
import {startPgRestoreList} from './pg-tool-runner.js';
import {tocCounts, type ToolProcess} from './pg-tools.js';

/** A backup to read: from the catalog (by id) or a file an operator points at. */
export interface BackupSource {
  readonly label: string;
  readonly record?: BackupRecord;
  open(): Promise<Readable>;
  manifest(): Promise<BackupManifest | undefined>;
}

export async function resolveSource(plane: ControlPlane, from: string): Promise<BackupSource> {
  const record = await new BackupCatalog(plane.control).get(from);
  if (record) {
    const destination = regionDestinations(plane, record.region).find((d) => d.name === record.destination);
    if (!destination) throw new UserError(`backup ${from} is in destination ${record.destination}, which dforge.yaml no longer declares`, {nextSteps: ['Declare the destination again, or restore from the file: --from <path>']});
    return {
      label: `backup ${record.id}`,
      record,
      open: () => destination.get(record.location),
      manifest: async () => JSON.parse(await destination.readSmall(manifestLocation(record.location))) as BackupManifest,
    };
  }
  const file = path.resolve(from);
  if (!(await fs.stat(file).then((s) => s.isFile(), () => false))) {
    throw new UserError(`no backup with id ${from} in the catalog, and no file at ${file}`, {nextSteps: ['List backups with: dforge backup list']});
  }
  return {
    label: `backup file ${file}`,
    open: async () => createReadStream(file, {highWaterMark: 256 * 1024}),
    manifest: async () => {
      const text = await fs.readFile(manifestLocation(file), 'utf8').catch(() => undefined);
      return text ? (JSON.parse(text) as BackupManifest) : undefined;
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

/** The key that opens a backup: the tenant's data key of the header's version, or the master key. */
export async function wrapperFor(plane: ControlPlane, parsed: ParsedHeader, label: string): Promise<FileKeyWrapper> {
  const h = parsed.header;
  if (h.kind === 'control') {
    const keyring = plane.keys.keyring;
    return {keyId: keyring.keyId, keyVersion: h.keyVersion, wrap: (k, c) => keyring.wrap(k, c), unwrap: (w, c, what) => keyring.unwrap(w, c, what)};
  }
  if (h.keyId !== `dek/${h.tenant}`) {
    throw new VerificationError(`${label}: its header names key ${h.keyId} for tenant ${h.tenant}`, {nextSteps: ['The header was edited; use another backup.']});
  }
  try {
    return dataKeyWrapper(await plane.dataKeys.get(h.tenant, h.keyVersion));
  } catch (err) {
    if (err instanceof VerificationError) throw err;
    throw new VerificationError(`${label} cannot be decrypted: data key ${h.keyId} v${h.keyVersion} does not exist (the tenant's keys were shredded, or this is another install's backup)`, {
      nextSteps: ['Nothing was restored. A shredded tenant\'s backups are unreadable by design; use a backup of a tenant whose keys exist.'],
      cause: err,
    });
  }
}

export interface IntegrityCheck {
  readonly label: string;
  readonly size: number;
  readonly sha256: string;
  readonly manifest: boolean;
}

/** Size and SHA-256 against the manifest (and the catalog): no key needed. */
export async function checkIntegrity(source: BackupSource): Promise<IntegrityCheck> {
  const manifest = await source.manifest();
  const stream = await source.open();
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  const sha256 = hash.digest('hex');
  const expected = manifest ?? source.record;
  const fail = (why: string): never => {
    throw new VerificationError(`${source.label} failed its integrity check: ${why}`, {nextSteps: ['The file was modified or damaged. Use another backup (dforge backup list).']});
  };
  if (expected) {
    if (expected.size !== size) fail(`it is ${size} bytes, the manifest says ${expected.size}`);
    if (expected.sha256 !== sha256) fail('its SHA-256 does not match the manifest');
  }
  if (manifest && source.record && (manifest.sha256 !== source.record.sha256 || manifest.backupId !== source.record.id)) fail('the manifest does not match the catalog');
  return {label: source.label, size, sha256, manifest: manifest !== undefined};
}

/**
 * Decrypts the whole stream and feeds it to `pg_restore --list`, so every chunk is authenticated
 * and the dump's table of contents is read. Returns the TOC's object counts.
 */
/** A dump's table of contents: `pg_restore --list` as printed, and its entry counts per object type. */
export interface TableOfContents {
  readonly list: string;
  readonly counts: Map<string, number>;
}

export async function decryptAndList(plane: ControlPlane, source: BackupSource, parsed: ParsedHeader, wrapper: FileKeyWrapper): Promise<TableOfContents> {
  const payloadKey = await openHeader(parsed, wrapper, source.label);
  const pgRestoreList = await startPgRestoreList(plane, Math.floor(Number(parsed.header.pgVersion) / 10_000));
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
  const decrypted = await decryptedDump(source, parsed, payloadKey);
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
  return {list, counts: tocCounts(list)};
}

/** The backup's plaintext dump, authenticated chunk by chunk as it streams. */
export async function decryptedDump(source: BackupSource, parsed: ParsedHeader, payloadKey: Buffer): Promise<Readable> {
  return (await source.open()).pipe(skipBytes(parsed.length)).pipe(new DecryptStream(payloadKey, source.label));
}

/** Streams the decrypted dump into a tool's stdin; a decryption failure kills the tool. */
export async function feedDecryptedDump(source: BackupSource, parsed: ParsedHeader, payloadKey: Buffer, tool: ToolProcess): Promise<void> {
  const decrypted = await decryptedDump(source, parsed, payloadKey);
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

export interface VerifyResult {
  readonly id: string;
  readonly tenant: string;
  readonly size: number;
  readonly sha256: string;
  readonly deep: boolean;
  /** With --deep: object counts from the dump's table of contents. */
  readonly objects?: Record<string, number>;
}

/** `backup verify`: integrity without the key; with `deep`, full decryption and pg_restore --list. */
export async function verifyBackup(plane: ControlPlane, from: string, options: {deep: boolean; clock?: () => Date}): Promise<VerifyResult> {
  const source = await resolveSource(plane, from);
  const integrity = await checkIntegrity(source);
  const parsed = await readBackupHeader(source);
  let objects: Record<string, number> | undefined;
  if (options.deep) {
    const toc = await decryptAndList(plane, source, parsed, await wrapperFor(plane, parsed, source.label));
    objects = Object.fromEntries(toc.counts);
    if (source.record) await new BackupCatalog(plane.control).markVerified(source.record.id, (options.clock ?? (() => new Date()))());
  }
  return {id: parsed.header.backupId, tenant: parsed.header.tenant, size: integrity.size, sha256: integrity.sha256, deep: options.deep, ...(objects ? {objects} : {})};
}

