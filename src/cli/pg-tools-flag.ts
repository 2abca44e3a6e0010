import {Flags} from '@oclif/core';

import {PG_TOOLS_MODES, type PgToolsMode} from '../backup/pg-tools-mode.js';

/** --pg-tools, shared by the commands that run pg_dump or pg_restore against a cluster. */
export const pgToolsFlag = Flags.custom<PgToolsMode>({
  summary: 'Where pg_dump/pg_restore run: auto (the host when its client fits the server, else the postgres container), host, or container.',
  options: [...PG_TOOLS_MODES],
  default: 'auto',
  env: 'DFORGE_PG_TOOLS',
  helpGroup: 'PG TOOLS',
});
