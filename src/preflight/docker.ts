import type Docker from 'dockerode';

import {connectDockerEngine, dockerSocketPath} from '../docker/engine.js';

/** The local Docker engine as preflight reports it. */
export interface DockerEngine {
  readonly client: Docker;
  readonly socketPath: string;
  readonly version: string;
  readonly apiVersion: string;
  /** Where the engine keeps images and volumes (the compose data), from `docker info`. */
  readonly rootDir: string;
}

/** Connects to the engine and reads its version and root directory; a UserError says why it cannot. */
export async function probeDockerEngine(env: NodeJS.ProcessEnv): Promise<DockerEngine> {
  const client = await connectDockerEngine(env);
  const [version, info] = await Promise.all([client.version(), client.info() as Promise<{DockerRootDir?: string}>]);
  return {client, socketPath: dockerSocketPath(env), version: version.Version, apiVersion: version.ApiVersion, rootDir: info.DockerRootDir ?? '/var/lib/docker'};
}
