import {PassThrough, Writable, type Readable} from 'node:stream';

import type Docker from 'dockerode';

import {UserError} from '../errors.js';

export interface ExecProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  /** Settles when the process has exited: resolves on status 0, rejects with its stderr otherwise. */
  readonly done: Promise<void>;
  /** Kills the process (its input failed verification); `done` then rejects. */
  kill(): void;
}

const EXIT_POLL_MS = 100;
const EXIT_WAIT_MS = 10_000;
const STDERR_KEEP = 8192;

/**
 * Runs a command inside a running container through the engine API, with stdout as a stream
 * (a pg_dump of any size flows straight out of the container, at the pace its reader takes it)
 * and stdin open for feeding one (pg_restore).
 *
 * A secret never goes into the exec request, which an engine in debug mode logs: `secretLine` is
 * written as the first line of the process's stdin, for a command that reads it (see
 * withSecretFromStdin).
 */
export async function execInContainer(container: Docker.Container, options: {cmd: readonly string[]; secretLine?: string; user?: string; label: string}): Promise<ExecProcess> {
  const exec = await container.exec({Cmd: [...options.cmd], User: options.user, AttachStdin: true, AttachStdout: true, AttachStderr: true, Tty: false});
  const socket = (await exec.start({hijack: true, stdin: true})) as unknown as NodeJS.ReadWriteStream & {destroy(err?: Error): void; end(): void};
  const stdout = new PassThrough();
  let stderr = '';
  let killed = false;
  const stopped = (): UserError => new UserError(`${options.label} was stopped: its input failed verification`, {nextSteps: ['Nothing was changed; see the error before this one.']});

  // The attach stream multiplexes stdout and stderr in frames (8-byte header: stream, 0, 0, 0,
  // big-endian length). Demultiplexed here, rather than by docker-modem, so that a slow reader of
  // stdout pauses the socket: memory stays bounded whatever the size of the dump.
  let pending: Buffer = Buffer.alloc(0);
  const demux = new Writable({
    write(chunk: Buffer, _enc, callback) {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      let waitForDrain = false;
      while (pending.length >= 8) {
        const size = pending.readUInt32BE(4);
        if (pending.length < 8 + size) break;
        const payload = pending.subarray(8, 8 + size);
        if (pending[0] === 2) {
          if (stderr.length < STDERR_KEEP) stderr += payload.toString();
        } else if (!stdout.write(payload)) {
          waitForDrain = true;
        }
        pending = pending.subarray(8 + size);
      }
      if (waitForDrain) stdout.once('drain', () => callback());
      else callback();
    },
  });
  socket.pipe(demux);

  const stdin = new PassThrough();
  if (options.secretLine !== undefined) stdin.write(`${options.secretLine}\n`);
  stdin.pipe(socket as unknown as Writable);
  // The socket may be closed under a pending write when the process exits early; its exit status says why.
  socket.on('error', () => undefined);

  const done = new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = async (): Promise<void> => {
      if (settled) return;
      settled = true;
      stdout.end();
      if (killed) return reject(stopped());
      try {
        const code = await exitCode(exec);
        if (code === 0) resolve();
        else reject(new UserError(`${options.label} failed in the container (exit ${code ?? 'unknown'}): ${stderr.trim().split('\n').slice(-3).join(' / ') || 'no message'}`, {nextSteps: ['Check the container log: docker logs <container>.']}));
      } catch (err) {
        reject(err);
      }
    };
    // 'end' is the normal close; 'close' without it is a reset (engine restart): settle either way.
    demux.on('finish', () => void finish());
    socket.on('close', () => void finish());
  });
  return {
    stdin,
    stdout,
    done,
    kill() {
      killed = true;
      stdin.unpipe();
      // Stop the process itself, not only the stream: a pg_restore left running would hold its connection.
      void exec
        .inspect()
        .then((info) => {
          if (info.Running && info.Pid > 0) process.kill(info.Pid, 'SIGKILL');
        })
        .catch(() => undefined)
        .finally(() => socket.destroy());
    },
  };
}

/** The exit code once the engine reports the process ended; right after the stream closes it may still say running. */
async function exitCode(exec: Docker.Exec): Promise<number | null> {
  const deadline = Date.now() + EXIT_WAIT_MS;
  for (;;) {
    const info = await exec.inspect();
    if (!info.Running || Date.now() > deadline) return info.ExitCode;
    await new Promise((r) => setTimeout(r, EXIT_POLL_MS));
  }
}

/**
 * Wraps a command so that it reads one line from stdin into an environment variable before it
 * runs: the way a secret reaches a process in a container without passing through the exec
 * request. The rest of stdin is the command's own (sh's `read` takes the line byte by byte).
 */
export function withSecretFromStdin(variable: string, cmd: readonly string[]): string[] {
  if (!/^[A-Z_][A-Z0-9_]*$/.test(variable)) throw new Error(`invalid variable name ${variable}`);
  return ['sh', '-c', `IFS= read -r ${variable} && export ${variable} && exec "$@"`, 'sh', ...cmd];
}
