/**
 * The runtime line of the panel: what the processes holding tenant data run as, and whether they
 * run at all.
 *
 * Compose: each service container, inspected live on the engine (docker-bench 4.1, 5.3, 5.4,
 * 5.10, 5.12, 5.25, 5.28) plus its state and health. Embedded: each cluster's postmaster (pg_ctl
 * and a session), the account its process runs as, and the systemd unit if one is installed.
 * What cannot be inspected (engine down, no container, a stopped server's account) is ERROR.
 */

import {promises as fs} from 'node:fs';
import path from 'node:path';

import {embeddedCluster, embeddedClusterNames} from '../../postgres/embedded-install.js';
import {embeddedClusterStates, embeddedUnitName, type EmbeddedClusterState} from '../../postgres/embedded-ops.js';
import {byCodePoint} from '../../render/rendered-file.js';
import {inspectServices, isServiceUp, STACK_SERVICES, type InspectedService} from '../../runtime/compose-stack.js';
import {defineCheck, errorResult, fail, pass, runCheck, skip, warn, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import {requirePlane, type PostureContext, type Probe} from '../context.js';

const COMPOSE_FIX = 'Remove any override of the service in <dir>/templates/compose/, then run: dforge install (it re-renders and recreates the service); see docs/operations.md#the-compose-stack';

export const CONTAINER_NON_ROOT = defineCheck({
  id: 'runtime.container.non-root',
  title: 'Service containers run as a non-root user',
  area: 'runtime',
  controls: ['docker-bench 4.1'],
  severity: 'high',
  expected: 'Config.User set to a user other than root / uid 0',
  method: 'docker inspect of the container: Config.User (the image USER unless compose sets user:)',
  fix: COMPOSE_FIX,
});

export const CONTAINER_READ_ONLY = defineCheck({
  id: 'runtime.container.read-only-rootfs',
  title: "Service containers' root file system is read-only",
  area: 'runtime',
  controls: ['docker-bench 5.12'],
  severity: 'medium',
  expected: 'HostConfig.ReadonlyRootfs true',
  method: 'docker inspect of the container: HostConfig.ReadonlyRootfs',
  fix: COMPOSE_FIX,
});

export const CONTAINER_CAPABILITIES = defineCheck({
  id: 'runtime.container.capabilities',
  title: 'Service containers drop every Linux capability',
  area: 'runtime',
  controls: ['docker-bench 5.3'],
  severity: 'high',
  expected: 'HostConfig.CapDrop contains ALL and CapAdd is empty (WARN when some are added back)',
  method: 'docker inspect of the container: HostConfig.CapDrop and HostConfig.CapAdd',
  fix: COMPOSE_FIX,
});

export const CONTAINER_NO_NEW_PRIVILEGES = defineCheck({
  id: 'runtime.container.no-new-privileges',
  title: 'Service containers cannot gain privileges (setuid, file capabilities)',
  area: 'runtime',
  controls: ['docker-bench 5.25'],
  severity: 'high',
  expected: 'HostConfig.SecurityOpt contains no-new-privileges',
  method: 'docker inspect of the container: HostConfig.SecurityOpt',
  fix: COMPOSE_FIX,
});

export const CONTAINER_NOT_PRIVILEGED = defineCheck({
  id: 'runtime.container.not-privileged',
  title: 'No service container is privileged',
  area: 'runtime',
  controls: ['docker-bench 5.4'],
  severity: 'critical',
  expected: 'HostConfig.Privileged false',
  method: 'docker inspect of the container: HostConfig.Privileged',
  fix: COMPOSE_FIX,
});

export const CONTAINER_LIMITS = defineCheck({
  id: 'runtime.container.resource-limits',
  title: 'Service containers have memory and process-count limits',
  area: 'runtime',
  controls: ['docker-bench 5.10', 'docker-bench 5.28'],
  severity: 'low',
  expected: 'HostConfig.Memory > 0 and HostConfig.PidsLimit > 0 (WARN when either is missing)',
  method: 'docker inspect of the container: HostConfig.Memory and HostConfig.PidsLimit',
  fix: "Set the service's limits under compose.limits in dforge.yaml (see docs/operations.md), then run: dforge install",
});

export const CONTAINER_HEALTHY = defineCheck({
  id: 'runtime.container.healthy',
  title: 'Every service of the stack is running and healthy',
  area: 'runtime',
  controls: [],
  severity: 'high',
  expected: 'a container per service, running, health healthy where it has a health check',
  method: 'docker inspect of the container: State.Status and State.Health.Status',
  fix: 'See which and why with: dforge status and docker logs <container>; then run: dforge install (it starts what is missing)',
});

export const EMBEDDED_RUNNING = defineCheck({
  id: 'runtime.embedded.server-running',
  title: 'Each embedded PostgreSQL cluster is running and answers',
  area: 'runtime',
  controls: [],
  severity: 'high',
  expected: 'pg_ctl status reports the postmaster running, and a provisioner session answers server_version',
  method: 'pg_ctl status on the data directory (postmaster.pid and its process), then a TLS 1.3 session as dforge_provisioner',
  fix: 'dforge db start --cluster <cluster> (or systemctl start dforge-postgres-<cluster>); its log is in <dir>/run/postgres/<cluster>',
});

export const EMBEDDED_ACCOUNT = defineCheck({
  id: 'runtime.embedded.server-account',
  title: 'Each embedded PostgreSQL server runs as a non-root account',
  area: 'runtime',
  controls: [],
  severity: 'high',
  expected: 'the postmaster process and the data directory owner are not uid 0',
  method: "the postmaster's real, effective, saved and file-system uids from /proc/<pid>/status, and the data directory's owner",
  fix: 'Run dforge as root so that the server runs as the postgres (or dforge-postgres) system account, or as the install directory owner; see docs/security.md#hardened-clusters',
});

export const EMBEDDED_UNIT = defineCheck({
  id: 'runtime.embedded.systemd-unit',
  title: "An installed systemd unit keeps dforge's hardening",
  area: 'runtime',
  controls: [],
  severity: 'medium',
  expected: "every hardening directive of the unit dforge renders, with the same values, in the installed unit and its drop-ins",
  method: 'reads /etc/systemd/system/dforge-postgres-<cluster>.service and every drop-in systemd would apply (system.control, /run, /etc, /usr/lib; <unit>.d and service.d), compared directive by directive with dforge db unit',
  fix: 'dforge db unit --cluster <cluster> > /etc/systemd/system/dforge-postgres-<cluster>.service && systemctl daemon-reload && systemctl restart dforge-postgres-<cluster>; see docs/security.md#hardened-clusters',
});

const CONTAINER_CHECKS = [CONTAINER_NON_ROOT, CONTAINER_READ_ONLY, CONTAINER_CAPABILITIES, CONTAINER_NO_NEW_PRIVILEGES, CONTAINER_NOT_PRIVILEGED, CONTAINER_LIMITS, CONTAINER_HEALTHY] as const;
const EMBEDDED_CHECKS = [EMBEDDED_RUNNING, EMBEDDED_ACCOUNT, EMBEDDED_UNIT] as const;

export const RUNTIME_CHECKS: readonly CheckDefinition[] = [...CONTAINER_CHECKS, ...EMBEDDED_CHECKS];

/** Where `dforge db unit` tells operators to install the unit. */
export const SYSTEMD_UNIT_DIR = '/etc/systemd/system';

/** The probe with the unit directory as a dependency, so a test can install a unit without touching the host's. */
export function runtimeProbeWith(options: {readonly systemdUnitDir: string}): Probe {
  return async (ctx) => {
    const target = ctx.config.target;
    const containers =
      target === 'compose'
        ? await containerResults(ctx)
        : CONTAINER_CHECKS.map((def) => ({...def, scope: 'install', ...skip(target === 'k8s' ? 'k8s install: pods run under the cluster, which dforge does not inspect' : `${target} install: no containers`)}));
    const clusters = embeddedClusterNames(ctx.config);
    const embedded =
      clusters.length > 0
        ? await embeddedResults(ctx, clusters, options.systemdUnitDir)
        : EMBEDDED_CHECKS.map((def) => ({...def, scope: 'install', ...skip(`${target} install: no embedded PostgreSQL cluster`)}));
    return [...containers, ...embedded];
  };
}

export const runtimeProbe: Probe = runtimeProbeWith({systemdUnitDir: SYSTEMD_UNIT_DIR});

async function containerResults(ctx: PostureContext): Promise<CheckResult[]> {
  let inspected: InspectedService[];
  try {
    const {connectDockerEngine} = await import('../../docker/engine.js');
    inspected = await ctx.limit(async () => inspectServices(await connectDockerEngine(), ctx.config.compose.project));
  } catch (err) {
    return STACK_SERVICES.flatMap((name) => CONTAINER_CHECKS.map((def) => errorResult(def, `service:${name}`, err)));
  }
  const names = [...new Set([...STACK_SERVICES, ...inspected.map((c) => c.state.service).sort(byCodePoint)])];
  const results: CheckResult[] = [];
  for (const name of names) {
    const mine = inspected.filter((c) => c.state.service === name);
    if (mine.length === 0) {
      const scope = `service:${name}`;
      results.push(...CONTAINER_CHECKS.map((def) => (def === CONTAINER_HEALTHY ? {...def, scope, ...fail('no container', `the ${name} service has no container in compose project ${ctx.config.compose.project}`)} : errorResult(def, scope, new Error(`no ${name} container to inspect`)))));
      continue;
    }
    // A scaled service has several containers: each is its own scope, named after the container.
    for (const c of mine) {
      const scope = mine.length === 1 ? `service:${name}` : `service:${name}:${c.info.Name.replace(/^\//, '')}`;
      for (const [def, measure] of CONTAINER_MEASURES) results.push(await runCheck(def, scope, async () => measure(c)));
    }
  }
  return results;
}

const ROOT_NAMES = new Set(['', '0', 'root']);
const capName = (c: string): string => c.toUpperCase().replace(/^CAP_/, '');

const CONTAINER_MEASURES: ReadonlyArray<readonly [CheckDefinition, (c: InspectedService) => Finding]> = [
  [
    CONTAINER_NON_ROOT,
    ({info}) => {
      const user = info.Config.User ?? '';
      // user[:group]; an empty user is the image default, which is root unless the image set USER.
      if (ROOT_NAMES.has(user.split(':')[0]!)) return fail(`user ${user === '' ? '(unset: root)' : user}`, 'its processes run as root inside the container, so an escape or a bug writing files acts as root');
      return pass(`user ${user}`);
    },
  ],
  [CONTAINER_READ_ONLY, ({info}) => (info.HostConfig.ReadonlyRootfs === true ? pass('read-only') : fail('writable', 'anything that runs in the container can change its programs and configuration'))],
  [
    CONTAINER_CAPABILITIES,
    ({info}) => {
      const drop = ((info.HostConfig.CapDrop as string[] | null | undefined) ?? []).map(capName);
      const add = ((info.HostConfig.CapAdd as string[] | null | undefined) ?? []).map(capName).sort(byCodePoint);
      if (!drop.includes('ALL')) return fail(`dropped: ${drop.join(', ') || 'none'}`, "the container keeps the engine's default capabilities");
      if (add.length > 0) return warn(`all dropped, added back: ${add.join(', ')}`, 'the added capabilities are held by processes in the container');
      return pass('all dropped, none added');
    },
  ],
  [
    CONTAINER_NO_NEW_PRIVILEGES,
    ({info}) => {
      const opts = ((info.HostConfig.SecurityOpt as string[] | null | undefined) ?? []).map((o) => o.replace('=', ':'));
      return opts.some((o) => o === 'no-new-privileges' || o === 'no-new-privileges:true') ? pass('no-new-privileges') : fail(`security options: ${opts.join(', ') || 'none'}`, 'a setuid binary in the image can raise privileges');
    },
  ],
  [CONTAINER_NOT_PRIVILEGED, ({info}) => (info.HostConfig.Privileged === true ? fail('privileged', 'a privileged container has every capability and the host devices: it is root on the host') : pass('not privileged'))],
  [
    CONTAINER_LIMITS,
    ({info}) => {
      const memory = info.HostConfig.Memory ?? 0;
      const pids = info.HostConfig.PidsLimit ?? 0;
      const observed = `memory ${memory > 0 ? `${Math.round(memory / 1024 / 1024)} MiB` : 'unlimited'}, pids ${pids > 0 ? pids : 'unlimited'}`;
      return memory > 0 && pids > 0 ? pass(observed) : warn(observed, 'a runaway or compromised service can exhaust the memory or the process table of the host, and with it every other service');
    },
  ],
  [
    CONTAINER_HEALTHY,
    ({state}) => {
      const observed = `${state.state}, health ${state.health}`;
      return isServiceUp(state) ? pass(observed) : fail(observed, `the ${state.service} service is not up`);
    },
  ],
];

async function embeddedResults(ctx: PostureContext, clusters: readonly string[], unitDir: string): Promise<CheckResult[]> {
  let states: EmbeddedClusterState[];
  try {
    // One slot: a handful of clusters, each a pg_ctl run and one session.
    states = await ctx.limit(() => embeddedClusterStates(ctx.dir, ctx.config, (cluster) => requirePlane(ctx).provisionerOn(cluster)));
  } catch (err) {
    return clusters.flatMap((name) => EMBEDDED_CHECKS.map((def) => errorResult(def, `cluster:${name}`, err)));
  }
  const results: CheckResult[] = [];
  for (const s of states) {
    const scope = `cluster:${s.cluster}`;
    results.push(
      await runCheck(EMBEDDED_RUNNING, scope, async () => {
        if (!s.initialised) return fail('not initialised', `no cluster in ${s.dataDir}`);
        if (!s.running) return fail('stopped', `pg_ctl finds no running postmaster for ${s.dataDir}`);
        if (s.unreachable !== undefined) {
          // Without the control plane there are no credentials to try: that is "not evaluated", not a server fault.
          if (!ctx.plane) throw new Error(`running (pid ${s.pid ?? '?'}), but no session could be tried: ${s.unreachable}`);
          return fail(`running (pid ${s.pid ?? '?'}), not answering`, s.unreachable);
        }
        return pass(`running (pid ${s.pid ?? '?'}, port ${s.port}), PostgreSQL ${s.serverVersion}`);
      }),
      await runCheck(EMBEDDED_ACCOUNT, scope, () => measureAccount(s)),
      await runCheck(EMBEDDED_UNIT, scope, () => measureUnit(ctx, s.cluster, unitDir)),
    );
  }
  return results;
}

async function measureAccount(s: EmbeddedClusterState): Promise<Finding> {
  if (!s.running || s.pid === undefined) throw new Error(`the server of cluster ${s.cluster} is not running, so the account it runs as cannot be observed`);
  const status = await fs.readFile(`/proc/${s.pid}/status`, 'utf8');
  // Uid: real effective saved filesystem
  const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status)?.slice(1).map(Number);
  if (!uids) throw new Error(`/proc/${s.pid}/status has no Uid line`);
  const owner = (await fs.stat(s.dataDir)).uid;
  const observed = `postmaster pid ${s.pid} uids ${uids.join('/')}, data directory owner uid ${owner}`;
  if (uids.some((u) => u === 0) || owner === 0) return fail(observed, 'root runs or owns the server: a compromised backend would own the host');
  return pass(observed);
}

/**
 * Drop-in directories systemd reads for a unit, most important first: `systemctl set-property`
 * writes to system.control, runtime changes go under /run, and `service.d/` applies to every
 * service. A drop-in's file name decides its order; of two with one name, the more important wins.
 */
const DROP_IN_ROOTS = ['/etc/systemd/system.control', '/run/systemd/system.control', '/run/systemd/transient', '/etc/systemd/system', '/run/systemd/system', '/usr/local/lib/systemd/system', '/usr/lib/systemd/system'];

async function unitDropIns(unitDir: string, unit: string): Promise<string[]> {
  // A test's own unit directory stands alone; the host's is one of the roots.
  const roots = unitDir === SYSTEMD_UNIT_DIR ? DROP_IN_ROOTS : [unitDir];
  const byName = new Map<string, string>();
  for (const root of roots) {
    for (const dir of [path.join(root, `${unit}.d`), path.join(root, 'service.d')]) {
      for (const f of await fs.readdir(dir).catch(() => [] as string[])) if (f.endsWith('.conf') && !byName.has(f)) byName.set(f, path.join(dir, f));
    }
  }
  return [...byName.keys()].sort(byCodePoint).map((f) => byName.get(f)!);
}

/** Every directive of the rendered unit from its hardening section on, plus User and UMask: what the installed unit must keep. */
async function measureUnit(ctx: PostureContext, cluster: string, unitDir: string): Promise<Finding> {
  const unitFile = path.join(unitDir, embeddedUnitName(cluster));
  const installed = await fs.readFile(unitFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (installed === undefined) return skip(`no ${unitFile}: the server is run by dforge db start, not systemd`, 'not installed');
  const pg = embeddedCluster(ctx.dir, ctx.config, cluster);
  const dropIns = await unitDropIns(unitDir, embeddedUnitName(cluster));
  const texts = [installed, ...(await Promise.all(dropIns.map((f) => fs.readFile(f, 'utf8'))))];
  const actual = directives(texts.join('\n'));
  // The unit name is per host, not per install: a unit for another install's data directory is not this cluster's.
  const execStart = actual.get('ExecStart')?.at(-1) ?? '';
  if (!execStart.split(/\s+/).includes(pg.dataDir)) return skip(`${unitFile} runs another data directory (${execStart}), not ${pg.dataDir}`, 'unit of another install');
  const rendered = pg.renderSystemdUnit();
  const hardening = rendered.slice(rendered.indexOf('# Hardening'), rendered.indexOf('[Install]'));
  const expected = directives(hardening);
  for (const key of ['User', 'UMask']) expected.set(key, directives(rendered).get(key) ?? []);
  const differing = [...expected].filter(([key, values]) => effective(actual.get(key) ?? [], values.length).join('\n') !== values.join('\n')).map(([key]) => key);
  if (differing.length > 0) return fail(`${differing.length} of ${expected.size} hardening directives differ: ${differing.join(', ')}`, `${unitFile}${dropIns.length > 0 ? ` with ${dropIns.length} drop-in(s)` : ''} weakens the rendered unit`);
  return pass(`${unitFile}${dropIns.length > 0 ? ` with ${dropIns.length} drop-in(s)` : ''}: all ${expected.size} hardening directives as rendered`);
}

/**
 * What systemd applies for a key, as far as this check needs: the last value of a key dforge sets
 * once (a later line or drop-in overrides it), and for a key it sets as a list (SystemCallFilter)
 * everything after the last empty assignment, which resets the list.
 */
function effective(values: readonly string[], renderedCount: number): string[] {
  if (renderedCount <= 1) return values.slice(-1);
  return values.slice(values.lastIndexOf('') + 1);
}

/** Key=value lines of a unit (and its drop-ins, appended), each key's values in order. */
function directives(text: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';') || line.startsWith('[')) continue;
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    map.set(key, [...(map.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return map;
}
