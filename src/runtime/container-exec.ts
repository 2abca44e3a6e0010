import {randomBytes} from 'node:crypto';
import {PassThrough, Writable, type Readable} from 'node:stream';

import type Docker from 'dockerode';

import {UserError} from '../errors.js';
import {splitFrames} from './docker-frames.js';

export interface ExecProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  /** Settles when the process has exited: resolves on status 0, rejects with its stderr otherwise. */
  readonly done: Promise<void>;
  /** Kills the process (its input failed verification, or its output has nowhere to go); `done` then rejects. */
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
 * written as the first line of the process's stdin, and the command reads it into `secretEnv`
 * before it runs. The command also records its pid in the container, so kill() can stop the
 * process itself (in the container's pid namespace), not just the stream.
 */
export async function execInContainer(
  container: Docker.Container,
  options: {cmd: readonly string[]; secretEnv?: {name: string; value: string}; user?: string; label: string},
): Promise<ExecProcess> {
  const pidFile = `/tmp/dforge-exec-${randomBytes(8).toString('hex')}.pid`;
  const exec = await container.exec({Cmd: wrapped(options.cmd, pidFile, options.secretEnv?.name), User: options.user, AttachStdin: true, AttachStdout: true, AttachStderr: true, Tty: false});
  const socket = (await exec.start({hijack: true, stdin: true})) as unknown as NodeJS.ReadWriteStream & {destroy(err?: Error): void};
  const stdout = new PassThrough();
  const stdin = new PassThrough();
  let stderr = '';
  let killed = false;
  // Once the process has exited its pid may be reused by another process of the container (a
  // postgres backend): kill() must not aim at it any more.
  let exited = false;
  const stopped = (): UserError => new UserError(`${options.label} was stopped before it finished`, {nextSteps: ['Nothing was changed; see the error before this one.']});

  // The attach stream multiplexes the process's stdout, stderr and the engine's own errors
  // (docker-frames.ts). Demultiplexed here, rather than by docker-modem, so that a slow reader of
  // stdout pauses the socket: memory stays bounded whatever the size of the dump.
  let pending: Buffer = Buffer.alloc(0);
  const demux = new Writable({
    write(chunk: Buffer, _enc, callback) {
      const {frames, rest} = splitFrames(pending.length === 0 ? chunk : Buffer.concat([pending, chunk]));
      pending = rest;
      let waitForDrain = false;
      for (const {stream, payload} of frames) {
        if (stream !== 1) {
          if (stderr.length < STDERR_KEEP) stderr += payload.toString();
        } else if (!stdout.write(payload)) {
          waitForDrain = true;
        }
      }
      if (waitForDrain) stdout.once('drain', () => callback());
      else callback();
    },
    // Runs after the last frame has been written to stdout, never before.
    final(callback) {
      if (pending.length > 0) return callback(new Error(`the ${options.label} stream ended inside a frame`));
      stdout.end();
      callback();
    },
  });
  socket.pipe(demux);
  // A reset (engine restart) closes without 'end': the frames received so far are all there will be.
  socket.on('close', () => {
    if (!demux.writableEnded) demux.end();
    // Whoever still feeds stdin learns that nobody reads it any more.
    stdin.unpipe();
    stdin.destroy();
  });
  // A reader that gives up (an error downstream) must not leave the process blocked on a full pipe.
  stdout.on('close', () => {
    if (!stdout.readableEnded) socket.destroy();
  });

  if (options.secretEnv) stdin.write(`${options.secretEnv.value}\n`);
  stdin.pipe(socket as unknown as Writable);
  // The socket may be closed under a pending write when the process exits early; its exit status says why.
  socket.on('error', () => undefined);
  stdin.on('error', () => undefined);

  const done = new Promise<void>((resolve, reject) => {
    demux.on('error', (err) => {
      stdout.destroy(err);
      reject(new UserError(`${options.label}: ${err.message}`, {nextSteps: ['Check the container and the engine (docker logs, journalctl -u docker), then run it again.']}));
    });
    demux.on('finish', () => {
      if (killed) return reject(stopped());
      exitCode(exec).then(
        (code) => {
          exited = code !== null;
          if (exited) void removePidFile(container, pidFile);
          if (code === 0) resolve();
          else reject(new UserError(`${options.label} failed in the container (${code === null ? 'still running after its output ended; killed' : `exit ${code}`}): ${stderr.trim().split('\n').slice(-3).join(' / ') || 'no message'}`, {nextSteps: ['Check the container log: docker logs <container>.']}));
          if (code === null) killInContainer(container, pidFile);
        },
        (err: unknown) => reject(err),
      );
    });
  });
  return {
    stdin,
    stdout,
    done,
    kill() {
      if (exited || killed) return;
      killed = true;
      stdin.unpipe();
      // Stop the process itself, not only the stream: a pg_restore left running would hold its connection.
      void killInContainer(container, pidFile).finally(() => socket.destroy());
    },
  };
}

/** The command, run by a shell that records its pid and (optionally) reads the secret line first. */
function wrapped(cmd: readonly string[], pidFile: string, secretEnv: string | undefined): string[] {
  if (secretEnv !== undefined && !/^[A-Z_][A-Z0-9_]*$/.test(secretEnv)) throw new Error(`invalid variable name ${secretEnv}`);
  const readSecret = secretEnv ? `IFS= read -r ${secretEnv} && export ${secretEnv} && ` : '';
  // `exec` keeps the pid: the recorded one is the tool's own. sh's `read` takes the line byte by
  // byte, so the rest of stdin is the tool's.
  return ['sh', '-c', `echo $$ > ${pidFile} && ${readSecret}exec "$@"`, 'sh', ...cmd];
}

function killInContainer(container: Docker.Container, pidFile: string): Promise<void> {
  return runDetached(container, `kill -KILL "$(cat ${pidFile})" 2>/dev/null; rm -f ${pidFile}`);
}

function removePidFile(container: Docker.Container, pidFile: string): Promise<void> {
  return runDetached(container, `rm -f ${pidFile}`);
}

async function runDetached(container: Docker.Container, script: string): Promise<void> {
  try {
    const exec = await container.exec({Cmd: ['sh', '-c', script], AttachStdout: false, AttachStderr: false});
    // The engine answers a detached start at once; its response stream must still be consumed,
    // or the open connection keeps dforge from exiting.
    const response = (await exec.start({Detach: true})) as unknown as NodeJS.ReadableStream | undefined;
    response?.resume();
  } catch {
    // The container is gone: so is the process, and its /tmp.
  }
}

/** The exit code once the engine reports the process ended; null if it is still running after the wait. */
async function exitCode(exec: Docker.Exec): Promise<number | null> {
  const deadline = Date.now() + EXIT_WAIT_MS;
  for (;;) {
    const info = await exec.inspect();
    if (!info.Running) return info.ExitCode;
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, EXIT_POLL_MS));
  }
}
