import {createHash} from 'node:crypto';

import type {Client} from 'pg';

import {tenantPasswordContext} from '../control/keys-store.js';
import {UserError} from '../errors.js';
import {randomPassword} from '../postgres/scram.js';
import type {KeyEncryptionService} from '../secrets/master-key.js';
import {crashPoint} from '../state/crash-point.js';

/**
 * The tenant role's password, sealed under the master key in dforge_control (tenant_credentials)
 * before any role uses it. A rotation stores the new password as pending first and promotes it
 * once the role has it, so the live password is never lost. How an operator is handed a tenant's
 * connection facts and password is credentials.ts.
 */
export class SealedTenantPasswords {
  constructor(
    /** The provisioner's connection to dforge_control. */
    private readonly control: Client,
    private readonly kek: KeyEncryptionService,
  ) {}

  /** The tenant's password: sealed in dforge_control before any role uses it, reused on a rerun. */
  async get(slug: string, createIfMissing: boolean): Promise<string> {
    const row = await this.control.query<{sealed_password: Buffer}>('SELECT sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
    if (row.rowCount === 1) return (await this.kek.unwrap(row.rows[0]!.sealed_password, tenantPasswordContext(slug), `password of tenant ${slug}`)).toString('utf8');
    if (!createIfMissing) throw new UserError(`tenant ${slug} has no stored credentials`, {nextSteps: [`Rotate them: dforge tenant rotate-credentials ${slug}`]});
    const password = randomPassword();
    await this.kek.withWrites(`tenant create ${slug}`, async () => {
      await this.control.query('INSERT INTO tenant_credentials (slug, sealed_password) VALUES ($1, $2)', [slug, await this.kek.wrap(Buffer.from(password), tenantPasswordContext(slug))]);
    });
    crashPoint('tenant.create.password-sealed');
    return password;
  }

  /**
   * A fingerprint of each tenant's sealed password (the SHA-256 of its ciphertext, in hex, computed
   * by the server), in one query: it changes whenever the password or its wrapping does, so a
   * publisher can tell which password files are current without opening every password. Those of
   * `slugs`.
   */
  async stamps(slugs: readonly string[]): Promise<Map<string, string>> {
    const rows = await this.control.query<{slug: string; stamp: string}>(`SELECT slug, ${STAMP} AS stamp FROM tenant_credentials WHERE slug = ANY($1)`, [slugs]);
    return new Map(rows.rows.map((r) => [r.slug, r.stamp]));
  }

  /**
   * One digest over the stamps of `slugs` (stampsDigest of what stamps() returns for them), so a
   * publisher can confirm that none of N passwords changed with one row instead of N.
   */
  async stampsDigest(slugs: readonly string[]): Promise<string> {
    const row = await this.control.query<{digest: string}>(
      `SELECT encode(sha256(convert_to(coalesce(string_agg(slug || ':' || ${STAMP}, ',' ORDER BY slug COLLATE "C"), ''), 'UTF8')), 'hex') AS digest
         FROM tenant_credentials WHERE slug = ANY($1)`,
      [slugs],
    );
    return row.rows[0]!.digest;
  }

  /** The rotation's new password: the pending one an interrupted rotation left, else a new one sealed as pending. */
  async pending(slug: string): Promise<string> {
    const existing = await this.control.query<{pending_sealed_password: Buffer | null}>('SELECT pending_sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
    let pending = existing.rows[0]?.pending_sealed_password ?? null;
    if (!pending) {
      // Wrapped and stored under the shared keys lock, so no master rotation retires the
      // version in between (the rotation re-wraps pending passwords with the rest).
      pending = await this.kek.withWrites(`tenant rotate-credentials ${slug}`, async () => {
        const wrapped = await this.kek.wrap(Buffer.from(randomPassword()), tenantPasswordContext(slug));
        await this.control.query('UPDATE tenant_credentials SET pending_sealed_password = $1 WHERE slug = $2', [wrapped, slug]);
        return wrapped;
      });
    }
    return (await this.kek.unwrap(pending, tenantPasswordContext(slug), `pending password of tenant ${slug}`)).toString('utf8');
  }

  /** Makes the pending password the live one, once the role has it. */
  async promote(slug: string, rotatedAt: string): Promise<void> {
    await this.control.query('UPDATE tenant_credentials SET sealed_password = pending_sealed_password, pending_sealed_password = NULL, rotated_at = $2 WHERE slug = $1', [slug, rotatedAt]);
  }
}

/** A sealed password's stamp: the SHA-256 of its ciphertext, in hex. */
const STAMP = "encode(sha256(sealed_password), 'hex')";

/**
 * What stampsDigest() returns for these stamps: the SHA-256 of "slug:stamp" joined by ",", in
 * byte order of the slugs (slugs are ASCII, so the server's "C" order is code-point order).
 */
export function stampsDigest(stamps: ReadonlyMap<string, string>): string {
  const lines = [...stamps].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([slug, stamp]) => `${slug}:${stamp}`);
  return createHash('sha256').update(lines.join(',')).digest('hex');
}
