import type Docker from 'dockerode';

import {UserError} from '../errors.js';

/** The labels docker compose (v1 and v2) puts on every container it creates. */
export const PROJECT_LABEL = 'com.docker.compose.project';
export const SERVICE_LABEL = 'com.docker.compose.service';
/** The tag of a service's image, beside the digest compose.yaml runs it by (templates/compose/compose.yaml). */
export const IMAGE_LABEL = 'dev.dforge.image';

/** The containers of a compose project, optionally of one service, running or not. */
export async function projectContainers(docker: Docker, project: string, service?: string): Promise<Docker.ContainerInfo[]> {
  const label = [`${PROJECT_LABEL}=${project}`, ...(service ? [`${SERVICE_LABEL}=${service}`] : [])];
  return docker.listContainers({all: true, filters: {label}});
}

/** The running container of a service, for exec and signals. */
export async function runningServiceContainer(docker: Docker, project: string, service: string): Promise<Docker.Container> {
  const running = (await projectContainers(docker, project, service)).filter((c) => c.State === 'running');
  if (running.length === 0) {
    throw new UserError(`the ${service} service of compose project ${project} is not running`, {
      nextSteps: ['Start the stack with: dforge install (it reconciles and starts what is missing)', 'See what is up with: dforge status'],
    });
  }
  return docker.getContainer(running[0]!.Id);
}
