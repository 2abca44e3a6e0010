import type {Client} from 'pg';

import type {BackupHeader} from './format.js';

/** A complete backup as the catalog in dforge_control records it. */
export interface BackupRecord {
  readonly id: string;
  readonly kind: 'tenant' | 'control';
  readonly tenant: string;
  readonly region: string;
  readonly cluster: string;
  readonly destination: string;
  readonly location: string;
  readonly size: number;
  readonly sha256: string;
  readonly pgVersion: string;
  readonly keyId: string;
  readonly keyVersion: number;
  readonly createdAt: string;
  readonly verifiedAt: string | null;
}

/** The sidecar manifest: enough to check a file's integrity without any key, and to rebuild the catalog. */
export interface BackupManifest extends BackupHeader {
  readonly format: 'dforge-backup-manifest/1';
  readonly destination: string;
  readonly location: string;
  readonly size: number;
  readonly sha256: string;
}

/**
 * Where a backup's file lives in its destination, from its (authenticated) header fields: a file
 * found anywhere else is a copy or a substitute, never the backup it claims to be.
 */
export const backupLocation = (h: Pick<BackupHeader, 'kind' | 'tenant' | 'backupId'>): string => `${h.kind === 'control' ? '_control' : h.tenant}/${h.backupId}.dfb`;

export const MANIFEST_SUFFIX = '.manifest.json';
export const manifestLocation = (location: string): string => `${location}${MANIFEST_SUFFIX}`;

export function recordFromManifest(m: BackupManifest): BackupRecord {
  return {
    id: m.backupId,
    kind: m.kind,
    tenant: m.tenant,
    region: m.region,
    cluster: m.cluster,
    destination: m.destination,
    location: m.location,
    size: m.size,
    sha256: m.sha256,
    pgVersion: m.pgVersion,
    keyId: m.keyId,
    keyVersion: m.keyVersion,
    createdAt: m.createdAt,
    verifiedAt: null,
  };
}

interface Row {
  id: string;
  kind: BackupRecord['kind'];
  tenant: string;
  region: string;
  cluster: string;
  destination: string;
  location: string;
  size: string;
  sha256: string;
  pg_version: string;
  key_id: string;
  key_version: number;
  created_at: Date;
  verified_at: Date | null;
}

const toRecord = (r: Row): BackupRecord => ({
  id: r.id,
  kind: r.kind,
  tenant: r.tenant,
  region: r.region,
  cluster: r.cluster,
  destination: r.destination,
  location: r.location,
  size: Number(r.size),
  sha256: r.sha256,
  pgVersion: r.pg_version,
  keyId: r.key_id,
  keyVersion: r.key_version,
  createdAt: r.created_at.toISOString(),
  verifiedAt: r.verified_at?.toISOString() ?? null,
});

export class BackupCatalog {
  constructor(private readonly client: Client) {}

  /** Inserts, or leaves an existing entry of the same id alone (rebuilding from manifests is idempotent). */
  async add(r: BackupRecord): Promise<boolean> {
    const result = await this.client.query(
      `INSERT INTO backups (id, kind, tenant, region, cluster, destination, location, size, sha256, pg_version, key_id, key_version, created_at, verified_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING`,
      [r.id, r.kind, r.tenant, r.region, r.cluster, r.destination, r.location, r.size, r.sha256, r.pgVersion, r.keyId, r.keyVersion, r.createdAt, r.verifiedAt],
    );
    return (result.rowCount ?? 0) === 1;
  }

  async list(options: {tenant?: string; kind?: BackupRecord['kind']} = {}): Promise<BackupRecord[]> {
    const rows = await this.client.query<Row>(
      `SELECT * FROM backups WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR kind = $2) ORDER BY created_at DESC, id DESC`,
      [options.tenant ?? null, options.kind ?? null],
    );
    return rows.rows.map(toRecord);
  }

  /** Every entry, as `destination:location` keys: what rebuild-catalog already knows. */
  async locations(): Promise<Set<string>> {
    const rows = await this.client.query<{destination: string; location: string}>('SELECT destination, location FROM backups');
    return new Set(rows.rows.map((r) => `${r.destination}:${r.location}`));
  }

  async get(id: string): Promise<BackupRecord | undefined> {
    const rows = await this.client.query<Row>('SELECT * FROM backups WHERE id = $1', [id]);
    return rows.rowCount === 1 ? toRecord(rows.rows[0]!) : undefined;
  }

  async markVerified(id: string, at: Date): Promise<void> {
    await this.client.query('UPDATE backups SET verified_at = $2 WHERE id = $1', [id, at.toISOString()]);
  }

  async remove(id: string): Promise<void> {
    await this.client.query('DELETE FROM backups WHERE id = $1', [id]);
  }
}
