import {PassThrough, type Readable, type Writable} from 'node:stream';

import type Docker from 'dockerode';

import {UserError} from '../errors.js';

export interface ExecProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  /** Settles when the process has exited: resolves on status 0, rejects with its stderr otherwise. */
  readonly done: Promise<void>;
  /** Cuts the process off (its input failed verification): its stdin closes mid-stream and `done` rejects. */
  kill(): void;
}

/**
 * Runs a command inside a running container through the engine API, with stdout as a stream
 * (a pg_dump of any size flows straight out of the container) and stdin open for feeding one
 * (pg_restore). Credentials go in `env`, which the exec API does not report back; never in `cmd`.
 */
export async function execInContainer(container: Docker.Container, options: {cmd: readonly string[]; env?: readonly string[]; user?: string; label: string}): Promise<ExecProcess> {
  const exec = await container.exec({
    Cmd: [...options.cmd],
    Env: [...(options.env ?? [])],
    User: options.user,
    AttachStdin: true,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
  });
  const stream = await exec.start({hijack: true, stdin: true});
  const stdout = new PassThrough();
  const stderrSink = new PassThrough();
  let stderr = '';
  stderrSink.on('data', (c: Buffer) => {
    if (stderr.length < 8192) stderr += c.toString();
  });
  container.modem.demuxStream(stream, stdout, stderrSink);
  const stdin = new PassThrough();
  stdin.pipe(stream as unknown as Writable);
  // The hijacked socket may be closed under a pending write when the process exits early; its exit status reports that.
  stream.on('error', () => undefined);
  let killed = false;
  const done = new Promise<void>((resolve, reject) => {
    stream.on('close', () => {
      if (killed) reject(new UserError(`${options.label} was stopped: its input failed verification`, {nextSteps: ['Nothing was changed; see the error before this one.']}));
    });
    stream.on('end', () => {
      stdout.end();
      exec.inspect().then(
        (info) => {
          if (killed) reject(new UserError(`${options.label} was stopped: its input failed verification`, {nextSteps: ['Nothing was changed; see the error before this one.']}));
          else if (info.ExitCode === 0) resolve();
          else reject(new UserError(`${options.label} failed in the container (exit ${info.ExitCode ?? 'unknown'}): ${stderr.trim().split('\n').slice(-3).join(' / ') || 'no message'}`, {nextSteps: ['Check the container log: docker logs <container>.']}));
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
      killed = true;
      stdin.unpipe();
      (stream as unknown as {destroy(): void}).destroy();
    },
  };
}
