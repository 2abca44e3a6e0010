/** Where pg_dump and pg_restore run: the host's binaries, the postgres container, or whichever fits. */
export const PG_TOOLS_MODES = ['auto', 'host', 'container'] as const;
export type PgToolsMode = (typeof PG_TOOLS_MODES)[number];
