/**
 * What a tenant move compares between the source and the copy (src/tenants/move.ts): per ordinary
 * table, its row count and the sum of a 64-bit hash of each row; per schema, its object count.
 *
 * Only ordinary tables (relkind 'r') of the module schemas and audit.change_log are read: a view
 * could run tenant code, a plain heap read cannot run anything the tenant did not already run as
 * itself. The caller reads as the tenant, never as the provisioner.
 */
import type {Client} from 'pg';

import {MODULE_SCHEMAS} from './module-sql.js';

/**
 * One ordinary table's rows as the tenant reads them: their count and the sum of a hash of each
 * row. A sum needs no sort, so a table is read once, at scan speed (in parallel where the server
 * plans it); it detects lost, extra and changed rows of a copy. It is not meant to resist a
 * forger: the tenant owns the data.
 */
export interface TableChecksum {
  readonly table: string;
  readonly rows: number;
  readonly checksum: string;
}

export interface Fingerprint {
  readonly tables: TableChecksum[];
  readonly objects: Record<string, number>;
}

const SCHEMAS = [...MODULE_SCHEMAS, 'audit'];

/**
 * The fingerprint of the database `c` is connected to. `alongside` says something else needs the
 * CPU meanwhile (the copy, while the frozen source is read): the scans then take no parallel
 * workers, which would starve it.
 */
export async function fingerprint(c: Client, o: {alongside?: boolean} = {}): Promise<Fingerprint> {
  if (o.alongside) await c.query('SET max_parallel_workers_per_gather = 0');
  // Text forms depend on these settings, and the two clusters' defaults may differ.
  await c.query(`SET search_path = pg_catalog, pg_temp; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'`);
  const tables = await c.query<{oid: number; schema: string; name: string}>(
    `SELECT c.oid, n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND (n.nspname = ANY($1) OR (n.nspname = 'audit' AND c.relname = 'change_log')) ORDER BY 2, 3`,
    [MODULE_SCHEMAS],
  );
  const checksums: TableChecksum[] = [];
  for (const t of tables.rows) {
    const r = await c.query<{n: string; sum: string}>(`SELECT count(*) AS n, coalesce(sum(${await rowHash(c, t.oid)}), 0)::text AS sum FROM ${quote(t.schema)}.${quote(t.name)} AS x`);
    checksums.push({table: `${t.schema}.${t.name}`, rows: Number(r.rows[0]!.n), checksum: r.rows[0]!.sum});
  }
  const objects = await c.query<{schema: string; n: string}>(
    'SELECT n.nspname AS schema, count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) GROUP BY 1 ORDER BY 1',
    [SCHEMAS],
  );
  return {tables: checksums, objects: Object.fromEntries(objects.rows.map((r) => [r.schema, Number(r.n)]))};
}

/**
 * A row's hash as a SQL expression over the alias `x`: the XOR of each column's hash, seeded by
 * its position (so equal values swapped between columns change it), with a per-position constant
 * for NULL. Each column is hashed by the extended hash function of its type's default hash
 * operator class, found in the catalog: about twice as fast as hash_record_extended on the whole
 * row, which first copies each row into a record. Only a superuser can create an operator class,
 * so these functions are PostgreSQL's or an installed extension's, never the tenant's. A type
 * without one taking exactly that type (json, point, varchar, date, timestamptz, arrays, domains,
 * tenant types) is hashed by its text, which its output function writes as the tenant, in the
 * settings fixed by fingerprint(). Both sides of a move hold the same column types, so
 * both build the same expression; a differing type differs in the sum. Values compare as their
 * type compares them (numeric 1.50 is 1.5, as with hash_record_extended); pg_restore copies them
 * exactly, so only a change no copy makes goes unseen.
 */
async function rowHash(c: Client, table: number): Promise<string> {
  const columns = await c.query<{name: string; hash: string | null}>(
    `SELECT a.attname AS name,
            (SELECT p.amproc::regproc::text FROM pg_opclass oc
               JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash'
               JOIN pg_amproc p ON p.amprocfamily = oc.opcfamily AND p.amprocnum = 2 AND p.amproclefttype = oc.opcintype AND p.amprocrighttype = oc.opcintype
               JOIN pg_proc f ON f.oid = p.amproc
              WHERE oc.opcdefault AND oc.opcintype = a.atttypid AND f.proargtypes[0] = a.atttypid) AS hash
       FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
    [table],
  );
  if (columns.rows.length === 0) return '0::int8';
  return columns.rows
    .map(({name, hash}, i) => {
      const value = `x.${quote(name)}`;
      const hashed = hash === null ? `hashtextextended(${value}::text, ${i + 1})` : `${hash}(${value}, ${i + 1})`;
      return `coalesce(${hashed}, ${-(i + 1)})`;
    })
    .join(' # ');
}

const quote = (name: string): string => `"${name.replaceAll('"', '""')}"`;
