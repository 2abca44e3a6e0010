import type Docker from 'dockerode';

import {UserError} from '../errors.js';

/** The engine's unix socket: DOCKER_HOST when it names one, else Docker's default. */
export function dockerSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const host = env.DOCKER_HOST;
  if (host?.startsWith('unix://')) return host.slice('unix://'.length);
  return '/var/run/docker.sock';
}

/** A dockerode client that has answered a ping; dockerode is loaded only by commands that need an engine. */
export async function connectDockerEngine(env: NodeJS.ProcessEnv = process.env): Promise<Docker> {
  const {default: DockerClient} = await import('dockerode');
  const socketPath = dockerSocketPath(env);
  const docker = new DockerClient({socketPath});
  try {
    await docker.ping();
  } catch (err) {
    throw new UserError(`the Docker engine at ${socketPath} does not answer (${(err as Error).message})`, {
      nextSteps: ['Start it (systemctl start docker), or install it (apt-get install docker.io), then re-run.', 'dforge preflight --target compose checks the whole host.'],
      cause: err,
    });
  }
  return docker;
}
