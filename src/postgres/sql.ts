/**
 * Quoting for the SQL dforge must build as text (DDL takes no bind parameters). pg's own
 * escapers, re-exported here so every module quotes the same way and none hand-rolls it.
 */
export {escapeIdentifier, escapeLiteral} from 'pg';

/**
 * A timestamptz column as ISO 8601 text in UTC, formatted by the server: to the microsecond
 * ('us'), or to the millisecond ('ms', microseconds dropped), which is what Date.toISOString()
 * writes. Formatting on the server also spares the client parsing a Date per value.
 */
export const isoUtcText = (column: string, precision: 'ms' | 'us'): string =>
  `pg_catalog.to_char(pg_catalog.timezone('UTC', ${column}), 'YYYY-MM-DD"T"HH24:MI:SS.${precision.toUpperCase()}"Z"')`;
