/**
 * What a tenant move compares between the source and the copy (src/tenants/move.ts): per ordinary
 * table, its row count and the sum of a 64-bit hash of each row; per schema, its object count.
 *
 * Only ordinary tables (relkind 'r') of the module schemas and audit.change_log are read, and no
 * tenant code runs while they are: a view could run it, and so could a cast the tenant defined
 * (no value is cast, see rowHash) or a forced row-security policy (row_security is off). The
 * caller reads as the tenant, never as the provisioner.
 */
import {createHash} from 'node:crypto';

import type {Client} from 'pg';

import {escapeIdentifier} from '../postgres/sql.js';
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
  // Text forms depend on these settings, and the two clusters' (or the role's) defaults may
  // differ. row_security off: a FORCE'd policy would run tenant code in the scan; with it off
  // such a scan fails instead (as pg_dump's does, so such a tenant cannot be moved anyway).
  await c.query(
    `SET search_path = pg_catalog, pg_temp; SET row_security = off; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET quote_all_identifiers = off`,
  );
  const tables = await c.query<{oid: number; schema: string; name: string}>(
    `SELECT c.oid, n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND (n.nspname = ANY($1) OR (n.nspname = 'audit' AND c.relname = 'change_log')) ORDER BY 2, 3`,
    [MODULE_SCHEMAS],
  );
  const checksums: TableChecksum[] = [];
  for (const t of tables.rows) {
    const from = `${escapeIdentifier(t.schema)}.${escapeIdentifier(t.name)}`;
    const r = await c.query<{n: string; sum: string}>(`SELECT count(*) AS n, coalesce(sum(${rowHash(await columnsOf(c, t.oid))}), 0)::text AS sum FROM ${from} AS x`);
    checksums.push({table: `${t.schema}.${t.name}`, rows: Number(r.rows[0]!.n), checksum: r.rows[0]!.sum});
  }
  const objects = await c.query<{schema: string; n: string}>(
    'SELECT n.nspname AS schema, count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) GROUP BY 1 ORDER BY 1',
    [SCHEMAS],
  );
  return {tables: checksums, objects: Object.fromEntries(objects.rows.map((r) => [r.schema, Number(r.n)]))};
}

/**
 * A column and how it is hashed (see rowHash): `hash` is the extended hash function of its type's
 * default hash operator class when that function takes exactly this type (int, text, numeric,
 * uuid, jsonb...); else `way` says whether its value ('value') or its elements ('elements') are
 * hashed through their type's hash function, or its text is ('text'); `output` is its type's
 * output function. Functions are schema-qualified.
 */
interface Column {
  readonly name: string;
  readonly hash: string | null;
  readonly way: 'value' | 'elements' | 'text';
  readonly output: string;
}

async function columnsOf(c: Client, table: number): Promise<Column[]> {
  // A base type (a domain's base type; an array's element type) with a default hash operator
  // class of its own. Enums, composites and ranges are left out: their hash functions hash enum
  // values by OID (through the type cache, at any depth), and a restore assigns new OIDs.
  const hashableBase = (t: string) => `(${t}.typtype = 'b' AND ${t}.typcategory <> 'A' AND EXISTS (SELECT FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash' WHERE oc.opcdefault AND oc.opcintype = ${t}.oid))`;
  const columns = await c.query<Column>(
    `SELECT a.attname AS name,
            (SELECT quote_ident(fn.nspname) || '.' || quote_ident(f.proname) FROM pg_opclass oc
               JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash'
               JOIN pg_amproc p ON p.amprocfamily = oc.opcfamily AND p.amprocnum = 2 AND p.amproclefttype = oc.opcintype AND p.amprocrighttype = oc.opcintype
               JOIN pg_proc f ON f.oid = p.amproc JOIN pg_namespace fn ON fn.oid = f.pronamespace
              WHERE oc.opcdefault AND oc.opcintype = a.atttypid AND f.proargtypes[0] = a.atttypid) AS hash,
            CASE WHEN ${hashableBase('b')} THEN 'value' WHEN b.typcategory = 'A' AND ${hashableBase('e')} THEN 'elements' ELSE 'text' END AS way,
            quote_ident(on_.nspname) || '.' || quote_ident(o.proname) AS output
       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
       JOIN pg_type b ON b.oid = coalesce(nullif(t.typbasetype, 0), t.oid)
       LEFT JOIN pg_type e ON e.oid = b.typelem
       JOIN pg_proc o ON o.oid = t.typoutput JOIN pg_namespace on_ ON on_.oid = o.pronamespace
      WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
    [table],
  );
  return columns.rows;
}

/**
 * A row's hash as a SQL expression over the alias `x`: the XOR of each column's hash, seeded by
 * the column's name (so equal values swapped between columns change it, and a copy that orders
 * the columns otherwise does not), with a per-column constant for NULL. No cast is ever applied:
 * a tenant may define casts from its own types, and verification must not run tenant code.
 *
 *  - A column whose type's hash function takes exactly that type is hashed by it, about twice as
 *    fast as hash_record_extended on the whole row, which first copies each row into a record.
 *    Only a superuser can create an operator class, so these functions are PostgreSQL's or an
 *    installed extension's, never the tenant's.
 *  - Another base type with a hash function (date, bool, timestamptz, bytea, a domain over one)
 *    goes through hash_array_extended as a one-element array, which finds that function; an array
 *    of one is hashed by its elements, plus its bounds.
 *  - Anything else (json, point, xml, varchar, reg* types, enums, composites, ranges) is hashed by
 *    the text its type's output function writes (a built-in one: only a superuser can create a
 *    base type), in the settings fingerprint() fixed.
 *
 * Values compare as their type compares them (numeric 1.50 is 1.5, as with hash_record_extended);
 * pg_restore copies them exactly, so only a change no copy makes goes unseen.
 */
function rowHash(columns: readonly Column[]): string {
  if (columns.length === 0) return '0::int8';
  return columns
    .map((col) => {
      const value = `x.${escapeIdentifier(col.name)}`;
      const seed = `${nameSeed(col.name)}::int8`;
      const hashed =
        col.hash !== null
          ? `${col.hash}(${value}, ${seed})`
          : col.way === 'value'
            ? `pg_catalog.hash_array_extended(ARRAY[${value}], ${seed})`
            : col.way === 'elements'
              ? `pg_catalog.hash_array_extended(${value}, ${seed}) # pg_catalog.hashtextextended(pg_catalog.array_dims(${value}), ${seed})`
              : `pg_catalog.hashtextextended(pg_catalog.textin(${col.output}(${value})), ${seed})`;
      return `coalesce(${hashed}, ${nameSeed(`null:${col.name}`)})`;
    })
    .join(' # ');
}

/** A 64-bit constant derived from `text`, the same on every machine. */
const nameSeed = (text: string): string => createHash('sha256').update(text).digest().readBigInt64BE(0).toString();

