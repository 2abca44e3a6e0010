import {isSea} from 'node:sea';
import {fileURLToPath} from 'node:url';

/** bin/run.js of this package (dist/cli/ → the package root). */
const BIN_RUN = fileURLToPath(new URL('../../bin/run.js', import.meta.url));

/**
 * How cron, a systemd unit or a printed command runs this same dforge, spelled out because cron
 * has almost no environment: the Node binary and bin/run.js, or, in the single executable (where
 * process.execPath is dforge itself), the executable alone.
 */
export function selfCommand(): string[] {
  return isSea() ? [process.execPath] : [process.execPath, BIN_RUN];
}
