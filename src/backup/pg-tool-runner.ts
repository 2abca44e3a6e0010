import {existsSync} from 'node:fs';

import type {ControlPlane} from '../control/plane.js';
import {clustersOf, endpointOf} from '../control/clusters.js';
import {UserError} from '../errors.js';
import {findPostgresBinaries} from '../postgres/binaries.js';
import {findBundledCluster} from '../render/values.js';
import {hostTool, libpqSession, spawnTool, type ToolProcess} from './pg-tools.js';

export interface PgToolRequest {
  readonly tool: 'pg_dump' | 'pg_restore';
  readonly args: string[];
  readonly cluster: string;
  readonly credentials: {user: string; password: string; database: string};
  readonly serverMajor: number;
  /** pg_restore only: the table-of-contents entries to restore (its -L list), sent ahead of the dump on stdin. */
  readonly useList?: string;
  /**
   * pg_dump only, default true: a 1 MiB output buffer (see STDBUF), for dforge reading the archive
   * itself. False when the archive goes straight on to pg_restore: there the bursts stall the
   * restore between them, and a 1 GB copy took 4.5 s longer (docs/benchmarks.md, "Tenant move").
   */
  readonly bufferOutput?: boolean;
}

/**
 * Runs a tool with a -L list read from the head of its stdin, up to a marker line: pg_restore
 * reads the list from a file, and a file dforge wrote on the host would not exist inside the
 * postgres container. The file is unlinked before the tool starts, which keeps it open on fd 3.
 */
const LIST_MARKER = '-- dforge: end of list --';
const WITH_LIST_FROM_STDIN = `f=$(mktemp) || exit 1
while IFS= read -r l; do [ "$l" = "${LIST_MARKER}" ] && break; printf '%s\\n' "$l" >> "$f"; done
exec 3<"$f" && rm -f "$f" && exec "$@" -L /dev/fd/3`;

function withList(command: readonly string[], request: PgToolRequest): string[] {
  return request.useList === undefined ? [...command] : ['sh', '-c', WITH_LIST_FROM_STDIN, 'sh', ...command];
}

function sendList(tool: StartedTool, request: PgToolRequest): StartedTool {
  if (request.useList !== undefined) tool.stdin.write(`${request.useList.trimEnd()}\n${LIST_MARKER}\n`);
  return tool;
}

export type StartedTool = ToolProcess & {close(): Promise<void>};

/** In the container the server's own client is on PATH, and the CA is the one mounted for the server. */
const CONTAINER_CA = '/run/secrets/ca-cert';

/**
 * Starts a pg tool for one cluster. `auto` uses the host's binaries when their major version can
 * handle the server, and otherwise (for the stack's own postgres service) runs the server's own
 * client inside its container through the engine API, streaming straight out of it.
 */
export async function startPgTool(plane: ControlPlane, request: PgToolRequest): Promise<StartedTool> {
  const entry = clustersOf(plane.config).get(request.cluster);
  if (!entry) throw new UserError(`no cluster ${request.cluster} in dforge.yaml`, {nextSteps: ['Check regions.*.clusters in dforge.yaml.']});
  const bundled = entry.cluster.kind === 'bundled';
  if (plane.pgTools === 'container' && !bundled) {
    throw new UserError(`cluster ${request.cluster} is ${entry.cluster.kind}, so it has no container to run ${request.tool} in`, {
      nextSteps: ['Use --pg-tools host (or auto) for embedded and external clusters.'],
    });
  }
  if (plane.pgTools === 'container' || (plane.pgTools === 'auto' && bundled && !hostToolFits(request.serverMajor))) {
    return startInContainer(plane, request);
  }
  const endpoint = await endpointOf(plane.keys.dir, plane.config, request.cluster);
  const binary = hostTool(request.tool, request.serverMajor);
  const session = await libpqSession(plane.keys.dir, endpoint, request.credentials);
  const [file, ...args] = withList(request.tool === 'pg_dump' && request.bufferOutput !== false && STDBUF ? [STDBUF, '-o', '1M', binary, ...request.args] : [binary, ...request.args], request);
  let tool: ToolProcess;
  try {
    tool = spawnTool(file!, args, session.env, request.tool);
  } catch (err) {
    await session.close();
    throw err;
  }
  return sendList({...tool, close: () => session.close()}, request);
}

/**
 * pg_dump writes its archive through stdio, which sizes its buffer from the pipe (4 KiB): about
 * 3,500 writes for a 20 MiB dump, each waking dforge to encrypt and hash a sliver, on the cores
 * the server and pg_dump need. coreutils' stdbuf gives it a 1 MiB buffer instead, so the same
 * bytes arrive in pipe-sized reads, when dforge itself reads the archive (a backup): without stdbuf
 * that dump is the same, only slower. A pipe straight into pg_restore is the opposite case (see
 * PgToolRequest.bufferOutput).
 */
const STDBUF = ['/usr/bin/stdbuf', '/bin/stdbuf'].find((f) => existsSync(f));

/**
 * `pg_restore --list` for a dump of PostgreSQL `dumpMajor`: it reads the dump on stdin and
 * connects nowhere, so it runs on the host when the host's client can read that dump, else in the
 * stack's postgres container (`auto`), or where --pg-tools says.
 */
export async function startPgRestoreList(plane: ControlPlane, dumpMajor: number): Promise<StartedTool> {
  const bundled = findBundledCluster(plane.config);
  const inContainer = bundled !== undefined && (plane.pgTools === 'container' || (plane.pgTools === 'auto' && !hostToolFits(dumpMajor)));
  if (!inContainer) return {...spawnTool(hostTool('pg_restore', dumpMajor), ['--list'], {PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C'}), close: async () => undefined};
  const [{connectDockerEngine}, {runningServiceContainer}, {execInContainer}] = await Promise.all([
    import('../docker/engine.js'),
    import('../runtime/compose-project.js'),
    import('../runtime/container-exec.js'),
  ]);
  const container = await runningServiceContainer(await connectDockerEngine(), plane.config.compose.project, 'postgres');
  return {...(await execInContainer(container, {cmd: ['pg_restore', '--list'], label: 'pg_restore --list (in the postgres container)'})), close: async () => undefined};
}

function hostToolFits(serverMajor: number): boolean {
  try {
    return findPostgresBinaries().majorVersion >= serverMajor;
  } catch {
    return false;
  }
}

async function startInContainer(plane: ControlPlane, request: PgToolRequest): Promise<StartedTool> {
  const [{connectDockerEngine}, {runningServiceContainer}, {execInContainer}] = await Promise.all([
    import('../docker/engine.js'),
    import('../runtime/compose-project.js'),
    import('../runtime/container-exec.js'),
  ]);
  const docker = await connectDockerEngine();
  const container = await runningServiceContainer(docker, plane.config.compose.project, 'postgres');
  const {user, password, database} = request.credentials;
  // TCP to the server's own address with full verification, like every other dforge connection.
  // The password reaches the tool through its stdin (first line), never through the exec request.
  const env = ['PGHOST=localhost', 'PGPORT=5432', `PGUSER=${user}`, `PGDATABASE=${database}`, 'PGSSLMODE=verify-full', `PGSSLROOTCERT=${CONTAINER_CA}`, 'PGSSLMINPROTOCOLVERSION=TLSv1.3', 'PGCONNECT_TIMEOUT=10', 'LC_ALL=C'];
  const started = await execInContainer(container, {
    cmd: ['env', ...env, ...withList([request.tool, ...request.args], request)],
    secretEnv: {name: 'PGPASSWORD', value: password},
    label: `${request.tool} (in the postgres container)`,
  });
  return sendList({...started, close: async () => undefined}, request);
}
