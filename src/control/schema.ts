import type {Client} from 'pg';

/**
 * The schema of dforge_control, as ordered migrations. Each runs once, in its own transaction,
 * recorded in schema_migrations; a rerun of bootstrap applies only what is missing.
 */
const MIGRATIONS: ReadonlyArray<{version: number; sql: string}> = [
  {
    version: 1,
    sql: `
CREATE TABLE tenants (
  slug             text PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9-]{1,39}$'),
  region           text NOT NULL,
  cluster          text NOT NULL,
  role_name        text NOT NULL UNIQUE,
  database_name    text NOT NULL UNIQUE,
  status           text NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'deleting')),
  connection_limit integer NOT NULL CHECK (connection_limit > 0),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenants_region_cluster ON tenants (region, cluster);

-- Sealed by the master key (docs/formats.md, wrapped key). pending_* holds a new password while a
-- rotation is between "sealed" and "applied to the role", so a crash never loses the live one.
CREATE TABLE tenant_credentials (
  slug                    text PRIMARY KEY REFERENCES tenants (slug) ON DELETE CASCADE,
  sealed_password         bytea NOT NULL,
  pending_sealed_password bytea,
  rotated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE data_keys (
  owner      text NOT NULL,
  version    integer NOT NULL CHECK (version > 0),
  state      text NOT NULL CHECK (state IN ('active', 'decrypt-only')),
  created_at timestamptz NOT NULL,
  wrapped    bytea NOT NULL,
  PRIMARY KEY (owner, version)
);
CREATE UNIQUE INDEX data_keys_one_active ON data_keys (owner) WHERE state = 'active';

-- Chained: each hash covers prev_hash; keyed since migration 3, see src/audit/ops-log.ts.
CREATE TABLE ops_log (
  seq       bigint PRIMARY KEY,
  at        timestamptz NOT NULL,
  actor     text NOT NULL,
  action    text NOT NULL,
  target    text NOT NULL,
  outcome   text NOT NULL CHECK (outcome IN ('ok', 'failed', 'waived')),
  details   jsonb NOT NULL,
  prev_hash bytea NOT NULL,
  hash      bytea NOT NULL UNIQUE
);
`,
  },
  {
    version: 2,
    sql: `
-- The backup catalog. A row is written only after the file and its manifest are durable, so a row
-- always names a complete backup; the catalog can be rebuilt from the destinations' manifests.
CREATE TABLE backups (
  id          text PRIMARY KEY,
  kind        text NOT NULL CHECK (kind IN ('tenant', 'control')),
  tenant      text NOT NULL,
  region      text NOT NULL,
  cluster     text NOT NULL,
  destination text NOT NULL,
  location    text NOT NULL,
  size        bigint NOT NULL CHECK (size >= 0),
  sha256      text NOT NULL,
  pg_version  text NOT NULL,
  key_id      text NOT NULL,
  key_version integer NOT NULL,
  created_at  timestamptz NOT NULL,
  verified_at timestamptz
);
CREATE INDEX backups_tenant_created ON backups (tenant, created_at DESC);
`,
  },
  {
    version: 3,
    sql: `
-- The ops log becomes keyed (src/audit/ops-log.ts, docs/formats.md): key_id names the ops-log key
-- of an entry's HMAC; NULL marks a legacy entry, hashed with plain SHA-256 before this migration.
-- chain_break records, inside the MAC, a log found cut or rewritten, or rolled back by a restore.
ALTER TABLE ops_log ADD COLUMN key_id text, ADD COLUMN chain_break jsonb;
`,
  },
  {
    version: 4,
    sql: `
-- The tenant-move journal (src/tenants/move-journal.ts). A row is written, naming the target
-- cluster and database, BEFORE anything is created on the target: the row is the recorded cleanup,
-- so a move killed at any step can be resumed or rolled back from what it says.
CREATE TABLE tenant_moves (
  id              bigserial PRIMARY KEY,
  slug            text NOT NULL,
  from_region     text NOT NULL,
  from_cluster    text NOT NULL,
  to_region       text NOT NULL,
  to_cluster      text NOT NULL,
  database        text NOT NULL,
  state           text NOT NULL CHECK (state IN ('planned', 'frozen', 'copied', 'verified', 'cutover', 'done', 'rolled-back')),
  reason          text,
  approval_reason text,
  error           text,
  started_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  finished_at     timestamptz
);
-- One open move per tenant: a second move waits for the first to finish or be rolled back.
CREATE UNIQUE INDEX tenant_moves_one_open ON tenant_moves (slug) WHERE state NOT IN ('done', 'rolled-back');
`,
  },
  {
    version: 5,
    sql: `
-- What residency report --verify found each cluster and destination to be (src/residency/verify.ts):
-- a cluster's system identifier, a destination's device and mount or bucket and location. The first
-- verify records it; a later one that finds another value reports drift until the operator accepts it.
CREATE TABLE residency_fingerprints (
  kind       text NOT NULL CHECK (kind IN ('cluster', 'destination')),
  name       text NOT NULL,
  value      text NOT NULL,
  first_seen timestamptz NOT NULL,
  last_seen  timestamptz NOT NULL,
  PRIMARY KEY (kind, name)
);
`,
  },
  {
    version: 6,
    sql: `
-- A cross-region move rotates the tenant's data key before cutover (src/tenants/move.ts): the
-- version it made separates backups made in the old region from those made in the new one, so
-- --purge-source can crypto-shred the old ones it cannot delete. And when the purge finished.
ALTER TABLE tenant_moves ADD COLUMN key_rotated_to integer, ADD COLUMN source_purged_at timestamptz;
`,
  },
];

export const CONTROL_SCHEMA_VERSION = MIGRATIONS.at(-1)!.version;

/** Applies the missing migrations; returns the versions applied. */
export async function migrateControlSchema(client: Client): Promise<number[]> {
  await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
  const applied: number[] = [];
  for (const migration of MIGRATIONS) {
    await client.query('BEGIN');
    try {
      // Serialise concurrent bootstraps: the second waits, then finds the migration applied.
      await client.query('LOCK TABLE schema_migrations IN EXCLUSIVE MODE');
      const done = await client.query('SELECT 1 FROM schema_migrations WHERE version = $1', [migration.version]);
      if (done.rowCount === 0) {
        await client.query(migration.sql);
        await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [migration.version]);
        applied.push(migration.version);
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  }
  return applied;
}
