import {execFile} from 'node:child_process';

import {findPostgresBinaries} from '../../postgres/binaries.js';
import {detectComposeCli} from '../../runtime/compose-cli.js';
import type {CheckOutcome, PreflightCheck, PreflightContext} from '../check.js';

/** 20.10: the first engine with cgroup v2 (the default of current distributions), and Debian bookworm's. */
export const MIN_DOCKER_VERSION = [20, 10] as const;

/** Compares dotted numeric versions ("20.10.24+dfsg1" against [20, 10]) on the parts given. */
export function versionAtLeast(version: string, minimum: readonly number[]): boolean {
  const parts = (/^v?(\d+(?:\.\d+)*)/.exec(version)?.[1] ?? '').split('.').map(Number);
  for (const [i, want] of minimum.entries()) {
    const have = parts[i] ?? 0;
    if (have !== want) return have > want;
  }
  return true;
}

export const dockerCheck: PreflightCheck = {
  id: 'runtime.docker',
  title: 'Docker engine',
  async run(ctx) {
    const engine = await ctx.docker();
    const detail = `Docker ${engine.version} (API ${engine.apiVersion}) at ${engine.socketPath}, root ${engine.rootDir}`;
    if (versionAtLeast(engine.version, MIN_DOCKER_VERSION)) return {status: 'pass', detail};
    return {status: 'fail', detail, remedy: `Upgrade the engine to Docker ${MIN_DOCKER_VERSION.join('.')} or newer (Debian: apt-get install docker.io from bookworm or later).`};
  },
};

export const composeCheck: PreflightCheck = {
  id: 'runtime.compose',
  title: 'Docker Compose',
  async run(ctx) {
    const cli = await detectComposeCli(ctx.env);
    return {status: 'pass', detail: `${cli.argv.join(' ')} ${cli.version} (${cli.flavour})`};
  },
};

export const postgresBinariesCheck: PreflightCheck = {
  id: 'runtime.postgres',
  title: 'PostgreSQL server binaries',
  async run() {
    const bins = findPostgresBinaries();
    return {status: 'pass', detail: `PostgreSQL ${bins.majorVersion} at ${bins.binDir}`};
  },
};

function kubectl(args: string[], ctx: PreflightContext, signal: AbortSignal): Promise<{ok: boolean; stdout: string; stderr: string; missing: boolean}> {
  return new Promise((resolve) => {
    execFile('kubectl', args, {env: ctx.env, signal, timeout: 15_000, encoding: 'utf8'}, (err, stdout, stderr) =>
      resolve({ok: !err, stdout, stderr, missing: (err as NodeJS.ErrnoException | null)?.code === 'ENOENT'}),
    );
  });
}

export const kubectlCheck: PreflightCheck = {
  id: 'runtime.kubectl',
  title: 'kubectl',
  async run(ctx, signal): Promise<CheckOutcome> {
    const r = await kubectl(['version', '--client', '-o', 'json'], ctx, signal);
    const remedy = 'Install kubectl (https://kubernetes.io/docs/tasks/tools/), matching your cluster within one minor version.';
    if (r.missing) return {status: 'fail', detail: 'kubectl is not on PATH', remedy};
    if (!r.ok) return {status: 'fail', detail: `kubectl version --client failed: ${r.stderr.trim().split('\n')[0] || 'no output'}`, remedy};
    const version = (JSON.parse(r.stdout) as {clientVersion?: {gitVersion?: string}}).clientVersion?.gitVersion ?? 'unknown version';
    return {status: 'pass', detail: `kubectl ${version}`};
  },
};

export const kubernetesCheck: PreflightCheck = {
  id: 'runtime.kubernetes',
  title: 'Kubernetes cluster reachable',
  async run(ctx, signal): Promise<CheckOutcome> {
    // Unreachable is a warning, not a failure: install then renders the manifests and stops, for
    // an operator who applies them from elsewhere.
    const remedy = 'Point kubectl at the cluster (KUBECONFIG or kubectl config use-context); without it, install renders the manifests and stops before applying them.';
    const r = await kubectl(['version', '-o', 'json', '--request-timeout=10s'], ctx, signal);
    if (r.missing) return {status: 'warn', detail: 'not tested: kubectl is not on PATH', remedy};
    const server = (JSON.parse(r.stdout || '{}') as {serverVersion?: {gitVersion?: string}}).serverVersion?.gitVersion;
    if (server) return {status: 'pass', detail: `Kubernetes ${server}`};
    return {status: 'warn', detail: `unreachable: ${r.stderr.trim().split('\n')[0] || 'no server version'}`, remedy};
  },
};
