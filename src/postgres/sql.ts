/**
 * Quoting for the SQL dforge must build as text (DDL takes no bind parameters). pg's own
 * escapers, re-exported here so every module quotes the same way and none hand-rolls it.
 */
export {escapeIdentifier, escapeLiteral} from 'pg';
