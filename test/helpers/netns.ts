import {spawn} from 'node:child_process';
import {promises as fs} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/**
 * Runs a command in a fresh network namespace (`unshare --net`) that has only a loopback
 * interface: no route anywhere, so anything that reaches for a registry or the internet fails.
 *
 * The stack's published ports live in the host's namespace, which the namespace's 127.0.0.1
 * cannot reach. For each port in `forward`, a listener inside the namespace carries connections
 * over a unix socket (unix sockets bound to a path cross namespaces) to 127.0.0.1:<port> on the
 * host: exactly the stack's own ports, and nothing else, are reachable. The Docker engine's unix
 * socket is reachable the same way it is outside.
 */

export interface NamespacedRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

const INNER_BRIDGE = `
import net from 'node:net';
import {spawn} from 'node:child_process';
const [sockDir, portList, ...command] = process.argv.slice(2);
const ports = portList ? portList.split(',').map(Number) : [];
await Promise.all(ports.map((port) => new Promise((resolve, reject) => {
  const server = net.createServer((inside) => {
    const out = net.connect(sockDir + '/' + port + '.sock');
    inside.pipe(out).pipe(inside);
    inside.on('error', () => out.destroy());
    out.on('error', () => inside.destroy());
  });
  server.on('error', reject);
  server.listen(port, '127.0.0.1', resolve);
  server.unref();
})));
const child = spawn(command[0], command.slice(1), {stdio: 'inherit'});
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
`;

export async function runInLoopbackNamespace(
  command: readonly string[],
  options: {forward?: readonly number[]; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number} = {},
): Promise<NamespacedRun> {
  const sockDir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-netns-'));
  const bridges = (options.forward ?? []).map(
    (port) =>
      new Promise<net.Server>((resolve, reject) => {
        const server = net.createServer((fromNamespace) => {
          const host = net.connect(port, '127.0.0.1');
          fromNamespace.pipe(host).pipe(fromNamespace);
          fromNamespace.on('error', () => host.destroy());
          host.on('error', () => fromNamespace.destroy());
        });
        server.on('error', reject);
        server.listen(path.join(sockDir, `${port}.sock`), () => resolve(server));
      }),
  );
  const servers = await Promise.all(bridges);
  const inner = path.join(sockDir, 'inner-bridge.mjs');
  await fs.writeFile(inner, INNER_BRIDGE);
  try {
    // The bridge runs on the test's Node; the command itself gets only the env it is given.
    const script = 'ip link set lo up && exec "$0" "$@"';
    const args = ['--net', '--', 'sh', '-c', script, process.execPath, inner, sockDir, (options.forward ?? []).join(','), ...command];
    return await new Promise<NamespacedRun>((resolve, reject) => {
      const child = spawn('unshare', args, {env: options.env ?? process.env, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe']});
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 600_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({code, stdout, stderr});
      });
    });
  } finally {
    for (const s of servers) s.close();
    await fs.rm(sockDir, {recursive: true, force: true});
  }
}
