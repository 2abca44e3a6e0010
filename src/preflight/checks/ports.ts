import net from 'node:net';

import {configSchema, type DforgeConfig} from '../../config/schema.js';
import {clustersOf} from '../../control/clusters.js';
import {embeddedCluster} from '../../postgres/embedded-install.js';
import {projectContainers} from '../../runtime/compose-project.js';
import {combine, type CheckOutcome, type PreflightCheck, type PreflightContext} from '../check.js';

/** A host port the install will listen on. */
interface PortClaim {
  readonly port: number;
  readonly host: string;
  /** The dforge.yaml setting that chooses it, for the remedy. */
  readonly setting: string;
}

/** The schema's defaults, for a run without dforge.yaml. */
const COMPOSE_DEFAULTS = configSchema.shape.compose.parse(undefined);
const DEFAULT_POSTGRES_PORT = 5432;

/**
 * The ports of the target: compose publishes the proxy on compose.bindAddress and the bundled
 * PostgreSQL on loopback (for dforge on the host); embedded clusters listen on loopback. k8s
 * listens on no host port.
 */
function portClaims(ctx: PreflightContext): PortClaim[] {
  const clusters = ctx.config ? [...clustersOf(ctx.config).values()].map((e) => e.cluster) : undefined;
  const postgres = (kind: 'bundled' | 'embedded'): PortClaim[] =>
    clusters === undefined
      ? [{port: DEFAULT_POSTGRES_PORT, host: '127.0.0.1', setting: 'the port of the cluster'}]
      : clusters.filter((c) => c.kind === kind).map((c) => ({port: c.port, host: '127.0.0.1', setting: `the port of cluster ${c.name}`}));
  if (ctx.target === 'compose') {
    const compose = ctx.config?.compose ?? COMPOSE_DEFAULTS;
    return [
      {port: compose.httpPort, host: compose.bindAddress, setting: 'compose.httpPort'},
      {port: compose.httpsPort, host: compose.bindAddress, setting: 'compose.httpsPort'},
      ...postgres('bundled'),
    ];
  }
  return ctx.target === 'embedded' ? postgres('embedded') : [];
}

/**
 * Ports already held by this install's own stack, with who holds them, so a re-run after install
 * (reconcile) does not report dforge as its own conflict: for compose the published ports of the
 * compose project's containers (docker-proxy listens for them); for embedded the clusters of this
 * install directory that are running.
 */
async function ownedPorts(ctx: PreflightContext): Promise<Map<number, string>> {
  const owned = new Map<number, string>();
  if (ctx.target === 'compose') {
    const project = (ctx.config?.compose ?? COMPOSE_DEFAULTS).project;
    const engine = await ctx.docker().catch(() => undefined);
    const containers = engine ? await projectContainers(engine.client, project) : [];
    for (const c of containers) for (const p of c.Ports) if (p.PublicPort) owned.set(p.PublicPort, `compose project ${project} (${c.Names[0]?.replace(/^\//, '') ?? c.Id.slice(0, 12)})`);
  }
  if (ctx.target === 'embedded' && ctx.config) {
    for (const [name, {cluster}] of clustersOf(ctx.config)) {
      const port = cluster.kind === 'embedded' ? await runningEmbeddedPort(ctx, ctx.config, name) : undefined;
      if (port !== undefined) owned.set(port, `embedded cluster ${name} of this install`);
    }
  }
  return owned;
}

/** The port the install's embedded cluster `name` is serving on, if it is running. */
async function runningEmbeddedPort(ctx: PreflightContext, config: DforgeConfig, name: string): Promise<number | undefined> {
  try {
    const status = await embeddedCluster(ctx.dir, config, name).status();
    return status.running ? status.port : undefined;
  } catch {
    // No PostgreSQL binaries or no data directory: nothing of ours is running (runtime.postgres reports the binaries).
    return undefined;
  }
}

/** Tries to bind the port, as the service will; closes it again at once. */
export function probePort(host: string, port: number): Promise<{free: true} | {free: false; code: string}> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve({free: false, code: err.code ?? err.message}));
    server.listen({host, port, exclusive: true}, () => server.close(() => resolve({free: true})));
  });
}

export const portsCheck: PreflightCheck = {
  id: 'host.ports',
  title: 'Ports free',
  timeoutMs: 15_000,
  async run(ctx): Promise<CheckOutcome> {
    const claims = portClaims(ctx);
    if (claims.length === 0) return {status: 'pass', detail: `the ${ctx.target} target listens on no host port`};
    const owned = await ownedPorts(ctx);
    const findings: CheckOutcome[] = [];
    // One at a time: two probes of the same port would collide with each other.
    for (const claim of claims) {
      const what = `${claim.port}/tcp on ${claim.host} (${claim.setting})`;
      const probe = await probePort(claim.host, claim.port);
      if (probe.free) {
        findings.push({status: 'pass', detail: `${what}: free`});
      } else if (probe.code === 'EADDRINUSE' && owned.has(claim.port)) {
        findings.push({status: 'pass', detail: `${what}: held by ${owned.get(claim.port)}`});
      } else if (probe.code === 'EADDRINUSE') {
        findings.push({status: 'fail', detail: `${what}: in use`, remedy: `Free port ${claim.port} (who holds it: ss -ltnp 'sport = :${claim.port}') or choose another as ${claim.setting} in dforge.yaml.`});
      } else if (probe.code === 'EADDRNOTAVAIL') {
        findings.push({status: 'fail', detail: `${what}: ${claim.host} is not an address of this host`, remedy: 'Set compose.bindAddress in dforge.yaml to an address of this host, or 0.0.0.0.'});
      } else if (probe.code === 'EACCES') {
        findings.push({status: 'warn', detail: `${what}: not tested, binding a port below 1024 needs root`, remedy: 'Run preflight as root to test privileged ports.'});
      } else {
        findings.push({status: 'warn', detail: `${what}: not tested (${probe.code})`, remedy: `Check port ${claim.port} by hand: ss -ltnp 'sport = :${claim.port}'`});
      }
    }
    return combine(findings);
  },
};
