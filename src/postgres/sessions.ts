import type {Client} from 'pg';

/**
 * Ends client sessions of a role and/or on some databases. Sessions of superusers and background
 * workers (autovacuum has no user) are left alone: a non-superuser may not signal them, and
 * PostgreSQL ends autovacuum itself when a database is renamed or dropped.
 */
export async function terminateSessions(c: Client, target: {role?: string; databases?: readonly string[]}): Promise<number> {
  const result = await c.query(
    `SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
      WHERE a.pid <> pg_backend_pid() AND NOT r.rolsuper AND (a.usename = $1 OR a.datname = ANY($2))`,
    [target.role ?? null, target.databases ?? []],
  );
  return result.rowCount ?? 0;
}
