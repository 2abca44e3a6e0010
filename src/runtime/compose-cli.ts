import {execFile} from 'node:child_process';

import {UserError} from '../errors.js';

/** How to run Docker Compose on this host. */
export interface ComposeCli {
  /** The command to prefix compose arguments with. */
  readonly argv: string[];
  /** Without a leading "v", e.g. 2.24.6 or 1.29.2. */
  readonly version: string;
  readonly flavour: 'v2' | 'v1';
}

/** DESIGN §6: the v2 plugin first, the v1 standalone binary as the fallback. */
const CANDIDATES: ReadonlyArray<{argv: string[]; flavour: ComposeCli['flavour']}> = [
  {argv: ['docker', 'compose'], flavour: 'v2'},
  {argv: ['docker-compose'], flavour: 'v1'},
];

const PROBE_TIMEOUT_MS = 15_000;

/**
 * Finds a working Docker Compose by asking each candidate for its version. Throws a UserError
 * naming the packages to install when neither answers.
 */
export async function detectComposeCli(env: NodeJS.ProcessEnv = process.env): Promise<ComposeCli> {
  const tried: string[] = [];
  for (const candidate of CANDIDATES) {
    const [file, ...args] = candidate.argv as [string, ...string[]];
    const probe = await run(file, [...args, 'version', '--short'], env);
    const version = /^v?(\d+\.\d+\S*)/.exec(probe.stdout.trim())?.[1];
    if (probe.ok && version) return {argv: [...candidate.argv], version, flavour: candidate.flavour};
    tried.push(`${candidate.argv.join(' ')}: ${probe.ok ? `unexpected output ${JSON.stringify(probe.stdout.trim().slice(0, 80))}` : probe.reason}`);
  }
  throw new UserError('Docker Compose is not installed: neither "docker compose" (v2) nor "docker-compose" (v1) runs', {
    nextSteps: [
      'Debian: apt-get install docker-compose (bookworm ships v1, trixie and later the v2 plugin); with Docker\'s own packages: apt-get install docker-compose-plugin',
      `What was tried: ${tried.join('; ')}`,
    ],
    data: {tried},
  });
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ok: boolean; stdout: string; reason: string}> {
  return new Promise((resolve) => {
    execFile(file, args, {env, timeout: PROBE_TIMEOUT_MS, encoding: 'utf8'}, (err, stdout, stderr) => {
      if (!err) return resolve({ok: true, stdout, reason: ''});
      const code = (err as NodeJS.ErrnoException).code;
      const reason = code === 'ENOENT' ? 'not found' : err.killed ? `no answer within ${PROBE_TIMEOUT_MS / 1000} s` : stderr.trim().split('\n')[0] || `exit status ${String(code)}`;
      resolve({ok: false, stdout, reason});
    });
  });
}
