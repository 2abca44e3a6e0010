import {createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject} from 'node:crypto';
import {constants as fsConstants, createReadStream, promises as fs} from 'node:fs';
import path from 'node:path';

import type {Client} from 'pg';

import {operatorRegionOf} from '../config/schema.js';
import {pkiDir} from '../certs/pki-paths.js';
import {usingControlPlane} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import {isoUtcText} from '../postgres/sql.js';
import {enforceRegion, type CrossRegionApproval} from '../residency/policy.js';
import {publicKeySha256, readEd25519PublicKey} from '../pki/ed25519.js';
import {writeFileAtomic, writeFileStreamed} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {canonicalJson} from './canonical-json.js';
import {openTenantChangeLog} from './change-log.js';
import {opsLogSession} from './service.js';
import {withOpsRecord} from './record.js';

/**
 * `dforge audit export`: a tenant's change log or the ops log, written to a file an auditor can
 * take away, with a detached, signed manifest (FILE.manifest.json) that says what the file is and
 * binds its SHA-256. The signature is Ed25519 under the install's export key (sealed secret
 * audit/export-signing-key, public half at pki/audit-export.pub), so openssl verifies it without
 * dforge. Rows are read in batches from one snapshot and streamed to the file, never held whole.
 */

export type ExportFormat = 'jsonl' | 'csv';
export const EXPORT_FORMATS: readonly ExportFormat[] = ['jsonl', 'csv'];

/** `ops`, or the tenant slug as `tenant:<slug>` (the ops log's target naming). */
export type ExportSource = {readonly tenant: string} | 'ops';

export interface ExportManifest {
  readonly kind: 'dforge-audit-export';
  readonly version: 1;
  readonly format: ExportFormat;
  readonly source: string;
  /** The requested times (null: open) and the first and last row id (ops: seq) exported. */
  readonly range: {readonly since: string | null; readonly until: string | null; readonly firstId: number | null; readonly lastId: number | null};
  readonly rows: number;
  readonly file: {readonly name: string; readonly bytes: number; readonly sha256: string};
  readonly createdAt: string;
  readonly dforgeVersion: string;
  readonly signature: {readonly algorithm: 'Ed25519'; readonly publicKeySha256: string; readonly value: string};
}

export interface ExportResult {
  readonly file: string;
  readonly manifestFile: string;
  readonly manifest: ExportManifest;
}

export const EXPORT_SIGNING_KEY_SECRET = 'audit/export-signing-key';
export const exportPublicKeyFile = (dir: InstallDir): string => path.join(pkiDir(dir), 'audit-export.pub');
export const manifestFileOf = (file: string): string => `${file}.manifest.json`;

const BATCH = 1000;

/** A source's rows, in id order, as the cells of one line; `id` is what the manifest's range names. */
interface ExportedRow {
  readonly id: string;
  readonly cells: ReadonlyArray<{readonly name: string; readonly value: string | null; readonly json: boolean}>;
}

interface SourceReader {
  readonly columns: readonly string[];
  /** Rows after `afterId`, in id order, at most BATCH. */
  batch(afterId: string): Promise<ExportedRow[]>;
}


/**
 * The tenant's change log, read as the tenant's login role: jsonb and ids as PostgreSQL prints
 * them, so a large number or a microsecond survives the trip exactly. ORDER BY names the table's
 * column: the bare name would be the text alias, and sort 10 before 9.
 */
function changeLogReader(c: Client, range: {since?: Date; until?: Date}): SourceReader {
  const columns = ['id', 'at', 'actor', 'db_role', 'txid', 'schema', 'table', 'operation', 'before', 'after'];
  return {
    columns,
    async batch(afterId) {
      const rows = await c.query<Record<string, string | null>>(
        `SELECT id::text AS id, ${isoUtcText('at', 'us')} AS at, actor, db_role, txid::text AS txid, schema_name AS schema, table_name AS "table", operation, before::text AS before, after::text AS after
           FROM audit.change_log
          WHERE id > $1::int8 AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at < $3)
          ORDER BY change_log.id LIMIT ${BATCH}`,
        [afterId, range.since ?? null, range.until ?? null],
      );
      return rows.rows.map((r) => ({id: r.id!, cells: columns.map((name) => ({name, value: r[name] ?? null, json: ['id', 'txid', 'before', 'after'].includes(name)}))}));
    },
  };
}

/** The ops log's entries with their chain fields, so an auditor can see what `audit verify` checks. */
function opsLogReader(c: Client, range: {since?: Date; until?: Date}): SourceReader {
  const columns = ['seq', 'at', 'actor', 'action', 'target', 'outcome', 'details', 'prev_hash', 'hash', 'key_id', 'chain_break'];
  return {
    columns,
    async batch(afterId) {
      const rows = await c.query<Record<string, string | null>>(
        `SELECT seq::text AS seq, ${isoUtcText('at', 'us')} AS at, actor, action, target, outcome, details::text AS details,
                pg_catalog.encode(prev_hash, 'hex') AS prev_hash, pg_catalog.encode(hash, 'hex') AS hash, key_id, chain_break::text AS chain_break
           FROM ops_log
          WHERE seq > $1::int8 AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at < $3)
          ORDER BY ops_log.seq LIMIT ${BATCH}`,
        [afterId, range.since ?? null, range.until ?? null],
      );
      return rows.rows.map((r) => ({id: r.seq!, cells: columns.map((name) => ({name, value: r[name] ?? null, json: ['seq', 'details', 'chain_break'].includes(name)}))}));
    },
  };
}

/** One JSON object per line; jsonb and numbers are embedded as PostgreSQL printed them. */
function jsonlLine(row: ExportedRow): string {
  return `{${row.cells.map((c) => `${JSON.stringify(c.name)}:${c.value === null ? 'null' : c.json ? c.value : JSON.stringify(c.value)}`).join(',')}}\n`;
}

/**
 * An RFC 4180 cell that a spreadsheet will not run: a cell starting with = + - @ (or a tab or
 * carriage return, which some spreadsheets skip before a formula) gets a leading apostrophe.
 */
export function csvCell(value: string | null): string {
  let v = value ?? '';
  if (/^[=+\-@\t\r]/.test(v)) v = `'${v}`;
  return /[",\r\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : v;
}

const csvLine = (cells: ReadonlyArray<string | null>): string => `${cells.map(csvCell).join(',')}\r\n`;

export interface ExportOptions {
  readonly source: ExportSource;
  readonly format: ExportFormat;
  readonly out: string;
  readonly since?: Date;
  readonly until?: Date;
  readonly dforgeVersion: string;
  /** --allow-cross-region --reason: a tenant's export may land outside its region (see operatorRegionOf). */
  readonly approval?: CrossRegionApproval;
  readonly now?: () => Date;
}

/**
 * Writes the export (0600, atomically: a temp file beside it, renamed when complete) and then its
 * signed manifest, and records an `audit.export` ops-log entry naming the source, range, rows and
 * hash, never a row.
 */
export async function exportAudit(dir: InstallDir, options: ExportOptions): Promise<ExportResult> {
  const target = options.source === 'ops' ? 'ops' : `tenant:${options.source.tenant}`;
  // The ops log is global (dforge_control); a tenant's change log is its data, and the file lands
  // in the operator's region: a crossing is refused, or recorded, before the file exists.
  if (options.source !== 'ops') {
    const slug = options.source.tenant;
    // A file that can't be written is refused before the crossing is recorded, not after.
    const parent = path.dirname(path.resolve(options.out));
    await fs.access(parent, fsConstants.W_OK).catch(() => {
      throw new UserError(`cannot write the export to ${path.resolve(options.out)}: ${parent} does not exist or is not writable; nothing was exported`, {
        nextSteps: [`Create the directory, or pass --out in a directory you can write.`],
      });
    });
    await usingControlPlane(dir, async (plane) => {
      const tenant = await plane.tenants.get(slug);
      const range = `${options.since ? ` --since ${options.since.toISOString()}` : ''}${options.until ? ` --until ${options.until.toISOString()}` : ''}`;
      const rerun = `dforge audit export --tenant ${slug} --format ${options.format}${range} --out '${options.out.replaceAll("'", "'\\''")}'`;
      await enforceRegion(plane, plane.config, {tenant: slug, from: tenant.region, to: operatorRegionOf(plane.config), operation: 'export', what: `export of tenant ${slug}'s change log to ${path.resolve(options.out)}`, rerun}, options.approval);
    });
  }
  return withOpsRecord(
    dir,
    {
      action: 'audit.export',
      target,
      details: (r) => ({file: r.file, format: r.manifest.format, range: r.manifest.range, rows: r.manifest.rows, sha256: r.manifest.file.sha256}),
    },
    async () => {
      const keys = await openKeyServices(dir);
      const signingKey = await exportSigningKey(keys);
      const c = options.source === 'ops' ? await opsLogSession(dir) : await openTenantChangeLog(dir, options.source.tenant);
      let written: Awaited<ReturnType<typeof writeExport>>;
      try {
        const range = {since: options.since, until: options.until};
        const reader = options.source === 'ops' ? opsLogReader(c, range) : changeLogReader(c, range);
        written = await writeExport(c, reader, options);
      } finally {
        await c.end().catch(() => undefined);
      }
      const out = path.resolve(options.out);
      const body: Omit<ExportManifest, 'signature'> = {
        kind: 'dforge-audit-export',
        version: 1,
        format: options.format,
        source: target,
        range: {since: options.since?.toISOString() ?? null, until: options.until?.toISOString() ?? null, firstId: written.firstId, lastId: written.lastId},
        rows: written.rows,
        file: {name: path.basename(out), bytes: written.bytes, sha256: written.sha256},
        createdAt: (options.now?.() ?? new Date()).toISOString(),
        dforgeVersion: options.dforgeVersion,
      };
      const manifest: ExportManifest = {
        ...body,
        signature: {algorithm: 'Ed25519', publicKeySha256: publicKeySha256(createPublicKey(signingKey)), value: sign(null, Buffer.from(canonicalJson(body)), signingKey).toString('base64')},
      };
      await writeFileAtomic(manifestFileOf(out), `${JSON.stringify(manifest, null, 2)}\n`, {mode: 0o600});
      return {file: out, manifestFile: manifestFileOf(out), manifest};
    },
  );
}

/** Streams every batch, from one snapshot, into the export file (see writeFileStreamed), hashing as it goes. */
async function writeExport(c: Client, reader: SourceReader, options: ExportOptions): Promise<{rows: number; bytes: number; sha256: string; firstId: number | null; lastId: number | null}> {
  let rows = 0;
  let firstId: string | undefined;
  let lastId: string | undefined;
  const {bytes, sha256} = await writeFileStreamed(
    path.resolve(options.out),
    async (write) => {
      const text = (t: string): Promise<void> => write(Buffer.from(t, 'utf8'));
      if (options.format === 'csv') await text(csvLine(reader.columns));
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      try {
        for (let after = '0'; ; ) {
          const batch = await reader.batch(after);
          if (batch.length === 0) break;
          await text(batch.map((r) => (options.format === 'csv' ? csvLine(r.cells.map((cell) => cell.value)) : jsonlLine(r))).join(''));
          firstId ??= batch[0]!.id;
          lastId = after = batch.at(-1)!.id;
          rows += batch.length;
        }
      } finally {
        await c.query('COMMIT').catch(() => undefined);
      }
    },
    {mode: 0o600},
  );
  return {rows, bytes, sha256, firstId: firstId === undefined ? null : Number(firstId), lastId: lastId === undefined ? null : Number(lastId)};
}

/**
 * The install's export signing key, created on first use, and its public half published at
 * pki/audit-export.pub (re-published if that file is missing or was replaced). Creation is
 * serialised by its own lock: two first exports at once must not sign with two different keys.
 */
async function exportSigningKey(keys: KeyServices): Promise<KeyObject> {
  const {dir, keyring, sealed} = keys;
  return keyring.withWrites('dforge audit export: the export signing key', async () => {
    if (!(await sealed.has(EXPORT_SIGNING_KEY_SECRET))) {
      const lock = await acquireLock(dir.locksDir, 'audit-export-key', {command: 'dforge audit export: create the export signing key'});
      try {
        if (!(await sealed.has(EXPORT_SIGNING_KEY_SECRET))) {
          const {privateKey} = generateKeyPairSync('ed25519');
          await sealed.put(EXPORT_SIGNING_KEY_SECRET, privateKey.export({type: 'pkcs8', format: 'pem'}));
        }
      } finally {
        await lock.release();
      }
    }
    const key = createPrivateKey(await sealed.get(EXPORT_SIGNING_KEY_SECRET));
    const pem = createPublicKey(key).export({type: 'spki', format: 'pem'}) as string;
    const file = exportPublicKeyFile(dir);
    if ((await fs.readFile(file, 'utf8').catch(() => undefined)) !== pem) {
      await fs.mkdir(pkiDir(dir), {recursive: true, mode: 0o755});
      await writeFileAtomic(file, pem, {mode: 0o644});
    }
    return key;
  });
}

/** The install's export public key, from the sealed signing key (not from pki/, which is not sealed). */
export async function installExportPublicKey(dir: InstallDir): Promise<KeyObject> {
  const {keyring, sealed} = await openKeyServices(dir);
  if (!(await sealed.has(EXPORT_SIGNING_KEY_SECRET))) {
    throw new UserError(`this install has never signed an audit export: no ${EXPORT_SIGNING_KEY_SECRET} in ${dir.secretsDir}`, {
      nextSteps: ['Pass the public key the export was signed with: dforge audit verify-export FILE --public-key audit-export.pub'],
    });
  }
  return createPublicKey(await keyring.withWrites('dforge audit verify-export: read the export signing key', () => sealed.get(EXPORT_SIGNING_KEY_SECRET)));
}

/** Reads a PEM public key an auditor brings; it must be Ed25519. */
export const readExportPublicKey = (file: string): Promise<KeyObject> => readEd25519PublicKey(file, "Pass the install's pki/audit-export.pub.");

export interface ExportVerification {
  readonly file: string;
  readonly manifestFile: string;
  readonly verified: true;
  readonly manifest: ExportManifest;
}

function tampered(reason: string, message: string, file: string): VerificationError {
  return new VerificationError(message, {
    nextSteps: [`Do not rely on ${file}: take the export again from the install (dforge audit export), or get the original copy from whoever made it.`],
    data: {reason},
  });
}

/**
 * Checks an export against its manifest: the manifest's signature under `publicKey`, then the
 * file's size and SHA-256, then its row count. Any mismatch is exit 6 naming what failed.
 */
export async function verifyExport(fileInput: string, publicKey: KeyObject): Promise<ExportVerification> {
  const file = path.resolve(fileInput);
  const manifestFile = manifestFileOf(file);
  const text = await fs.readFile(manifestFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read the manifest ${manifestFile}: ${err.code ?? err.message}`, {nextSteps: ['The manifest is written beside the export as FILE.manifest.json; keep the two together.']});
  });
  let manifest: ExportManifest;
  try {
    manifest = JSON.parse(text) as ExportManifest;
  } catch {
    throw tampered('manifest', `the manifest ${manifestFile} is not valid JSON`, file);
  }
  if (!manifest || typeof manifest !== 'object' || manifest.kind !== 'dforge-audit-export' || typeof manifest.signature?.value !== 'string' || typeof manifest.file?.sha256 !== 'string') {
    throw tampered('manifest', `${manifestFile} is not a dforge audit export manifest`, file);
  }
  const {signature, ...body} = manifest;
  if (signature.publicKeySha256 !== publicKeySha256(publicKey)) {
    throw tampered('key', `the manifest was signed by key ${String(signature.publicKeySha256)}, not by the given export key ${publicKeySha256(publicKey)}`, file);
  }
  if (signature.algorithm !== 'Ed25519' || !verify(null, Buffer.from(canonicalJson(body)), publicKey, Buffer.from(signature.value, 'base64'))) {
    throw tampered('signature', `the manifest's signature does not verify: ${manifestFile} was changed after it was signed`, file);
  }
  const {sha256, bytes, rows} = await scanExport(file, manifest.format);
  if (bytes !== manifest.file.bytes || sha256 !== manifest.file.sha256) {
    throw tampered('sha256', `${file} is not the file the manifest signs: SHA-256 ${sha256} (${bytes} bytes), the manifest says ${manifest.file.sha256} (${manifest.file.bytes} bytes)`, file);
  }
  if (rows !== manifest.rows) throw tampered('rows', `${file} holds ${rows} rows, the manifest says ${manifest.rows}`, file);
  return {file, manifestFile, verified: true, manifest};
}

/** Hashes the file and counts its rows in one streaming pass (CSV: records outside quotes, less the header). */
async function scanExport(file: string, format: ExportFormat): Promise<{sha256: string; bytes: number; rows: number}> {
  const hash = createHash('sha256');
  let bytes = 0;
  let lines = 0;
  let quoted = false;
  try {
    for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      bytes += chunk.length;
      for (const byte of chunk) {
        if (byte === 0x22 && format === 'csv') quoted = !quoted;
        else if (byte === 0x0a && !quoted) lines++;
      }
    }
  } catch (err) {
    throw new UserError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {nextSteps: ['Check the path of the export.']});
  }
  return {sha256: hash.digest('hex'), bytes, rows: format === 'csv' ? Math.max(0, lines - 1) : lines};
}
