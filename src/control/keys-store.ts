import type {Client} from 'pg';

import type {DataKeyRecord, DataKeyStore} from '../secrets/data-keys.js';
import type {KeyEncryptionService} from '../secrets/master-key.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import {crashPoint} from '../state/crash-point.js';

/** Tenant data keys in dforge_control.data_keys: every change is one transaction. */
export class ControlDataKeyStore implements DataKeyStore {
  constructor(private readonly client: Client) {}

  async list(owner?: string): Promise<DataKeyRecord[]> {
    const rows = await this.client.query<{owner: string; version: number; state: DataKeyRecord['state']; created_at: Date; wrapped: Buffer}>(
      `SELECT owner, version, state, created_at, wrapped FROM data_keys ${owner === undefined ? '' : 'WHERE owner = $1'} ORDER BY owner, version`,
      owner === undefined ? [] : [owner],
    );
    return rows.rows.map((r) => ({owner: r.owner, version: r.version, state: r.state, createdAt: r.created_at.toISOString(), wrapped: r.wrapped}));
  }

  async replace(records: readonly DataKeyRecord[]): Promise<void> {
    await inTransaction(this.client, async () => {
      // Demotions first, so the one-active-version index holds after every statement.
      const ordered = [...records].sort((a, b) => (a.state === b.state ? 0 : a.state === 'decrypt-only' ? -1 : 1));
      for (const r of ordered) {
        await this.client.query(
          `INSERT INTO data_keys (owner, version, state, created_at, wrapped) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (owner, version) DO UPDATE SET state = EXCLUDED.state, wrapped = EXCLUDED.wrapped`,
          [r.owner, r.version, r.state, r.createdAt, r.wrapped],
        );
      }
    });
  }

  async removeOwner(owner: string): Promise<number> {
    return (await this.client.query('DELETE FROM data_keys WHERE owner = $1', [owner])).rowCount ?? 0;
  }

  async removeVersions(owner: string, versions: readonly number[]): Promise<number[]> {
    // The state condition is the store's own guard: an active version survives even a wrong caller.
    const rows = await this.client.query<{version: number}>("DELETE FROM data_keys WHERE owner = $1 AND version = ANY($2::integer[]) AND state = 'decrypt-only' RETURNING version", [owner, [...versions]]);
    return rows.rows.map((r) => r.version).sort((a, b) => a - b);
  }
}

/**
 * Everything dforge_control holds under the master key: tenant data keys and sealed tenant
 * passwords. A master rotation re-wraps all of it in one transaction.
 */
export class ControlWrappedKeys implements WrappedKeySet {
  readonly id = 'control';
  readonly label = 'dforge_control (tenant data keys and passwords)';

  constructor(
    private readonly client: Client,
    private readonly kek: KeyEncryptionService,
  ) {}

  async verifyAll(): Promise<number> {
    const items = await this.items(false);
    for (const item of items) await this.kek.unwrap(item.blob, item.context, item.what);
    return items.length;
  }

  async countByVersion(): Promise<Map<number, number>> {
    const counts = new Map<number, number>();
    for (const item of await this.items(false)) {
      const v = this.kek.versionOf(item.blob, item.what);
      counts.set(v, (counts.get(v) ?? 0) + 1);
    }
    return counts;
  }

  async rewrapAll(toVersion: number): Promise<number> {
    const changed = await inTransaction(this.client, async () => {
      let changed = 0;
      for (const item of await this.items(true)) {
        if (this.kek.versionOf(item.blob, item.what) === toVersion) continue;
        const plain = await this.kek.unwrap(item.blob, item.context, item.what);
        await this.client.query(item.update, [await this.kek.wrap(plain, item.context), ...item.key]);
        changed++;
      }
      return changed;
    });
    if (changed > 0) crashPoint('master.rewrap.control-commit');
    return changed;
  }

  private async items(forUpdate: boolean): Promise<Array<{blob: Buffer; context: string; what: string; update: string; key: unknown[]}>> {
    const lock = forUpdate ? ' FOR UPDATE' : '';
    const keys = await this.client.query<{owner: string; version: number; wrapped: Buffer}>(`SELECT owner, version, wrapped FROM data_keys${lock}`);
    const creds = await this.client.query<{slug: string; sealed_password: Buffer; pending_sealed_password: Buffer | null}>(`SELECT slug, sealed_password, pending_sealed_password FROM tenant_credentials${lock}`);
    return [
      ...keys.rows.map((r) => ({
        blob: r.wrapped,
        context: `dek:${r.owner}:v${r.version}`,
        what: `data key dek/${r.owner} v${r.version}`,
        update: 'UPDATE data_keys SET wrapped = $1 WHERE owner = $2 AND version = $3',
        key: [r.owner, r.version],
      })),
      ...creds.rows.map((r) => ({
        blob: r.sealed_password,
        context: tenantPasswordContext(r.slug),
        what: `password of tenant ${r.slug}`,
        update: 'UPDATE tenant_credentials SET sealed_password = $1 WHERE slug = $2',
        key: [r.slug],
      })),
      ...creds.rows
        .filter((r) => r.pending_sealed_password !== null)
        .map((r) => ({
          blob: r.pending_sealed_password!,
          context: tenantPasswordContext(r.slug),
          what: `pending password of tenant ${r.slug}`,
          update: 'UPDATE tenant_credentials SET pending_sealed_password = $1 WHERE slug = $2',
          key: [r.slug],
        })),
    ];
  }
}

export const tenantPasswordContext = (slug: string): string => `tenant-password:${slug}`;

export async function inTransaction<T>(client: Client, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
