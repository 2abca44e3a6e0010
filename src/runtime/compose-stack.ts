import {execFile} from 'node:child_process';
import path from 'node:path';

import type Docker from 'dockerode';

import {UserError} from '../errors.js';
import {byCodePoint} from '../render/rendered-file.js';
import type {ComposeCli} from './compose-cli.js';
import {IMAGE_LABEL, projectContainers, SERVICE_LABEL} from './compose-project.js';
import {splitFrames} from './docker-frames.js';

/** The services of the rendered stack, by their compose names. */
export const STACK_SERVICES = ['postgres', 'auth-db', 'auth', 'app', 'proxy'] as const;
export type StackService = (typeof STACK_SERVICES)[number];

const COMPOSE_TIMEOUT_MS = 10 * 60_000;
const POLL_MS = 1000;
const LOG_TAIL = 20;

export interface ServiceState {
  readonly service: string;
  readonly containerId: string;
  readonly image: string;
  readonly state: string;
  /** healthy | unhealthy | starting | none (no health check) */
  readonly health: string;
}

/** Up: running, and healthy when the image or compose defines a health check. */
export function isServiceUp(s: ServiceState): boolean {
  return s.state === 'running' && (s.health === 'healthy' || s.health === 'none');
}

/** What is wrong with the stack's services, one sentence each; empty when every expected service is up. */
export function serviceProblems(states: readonly ServiceState[], expected: readonly string[] = STACK_SERVICES): string[] {
  const problems: string[] = [];
  for (const name of expected) {
    if (!states.some((s) => s.service === name)) problems.push(`service ${name} has no container`);
  }
  for (const s of states) {
    if (isServiceUp(s)) continue;
    problems.push(s.state === 'running' ? `service ${s.service} is ${s.health}` : `service ${s.service} is ${s.state}${s.health === 'none' ? '' : ` (health ${s.health})`}`);
  }
  return problems;
}

/** A service container of a compose project: its state, and the engine's full inspection (user, host config). */
export interface InspectedService {
  readonly state: ServiceState;
  readonly info: Docker.ContainerInspectInfo;
}

/** Every container of the project, running or not, inspected live, sorted by service name. */
export async function inspectServices(docker: Docker, project: string): Promise<InspectedService[]> {
  const out: InspectedService[] = [];
  for (const c of await projectContainers(docker, project)) {
    const info = await docker.getContainer(c.Id).inspect();
    out.push({
      // The image by the tag it was installed as: compose.yaml pins it by digest and keeps the tag on a label.
      state: {service: c.Labels[SERVICE_LABEL] ?? '?', containerId: c.Id, image: info.Config.Labels?.[IMAGE_LABEL] ?? info.Config.Image, state: info.State.Status, health: info.State.Health?.Status ?? 'none'},
      info,
    });
  }
  return out.sort((a, b) => byCodePoint(a.state.service, b.state.service));
}

/**
 * One compose project, driven through the compose CLI for what compose owns (up, restart, down)
 * and through the engine API for what needs structure (container states, health, logs).
 */
export class ComposeStack {
  constructor(
    private readonly options: {
      readonly cli: ComposeCli;
      readonly composeFile: string;
      readonly project: string;
      readonly docker: Docker;
      readonly clock?: () => number;
    },
  ) {}

  get project(): string {
    return this.options.project;
  }

  /**
   * Creates or recreates what changed (config-hash labels, images), removes services no longer
   * rendered. Compose refuses to change a network in place (one that became internal, say); then
   * the containers and networks go and come back, and the volumes stay.
   */
  async up(): Promise<void> {
    try {
      await this.compose(['up', '-d', '--remove-orphans']);
    } catch (error) {
      if (!(error instanceof UserError) || !/needs to be recreated/i.test(error.message)) throw error;
      await this.down({volumes: false});
      await this.compose(['up', '-d', '--remove-orphans']);
    }
  }

  async restart(services: readonly string[]): Promise<void> {
    if (services.length > 0) await this.compose(['restart', ...services]);
  }

  /** Stops and removes the containers and networks; volumes go only with `volumes`. */
  async down(options: {volumes: boolean}): Promise<void> {
    await this.compose(['down', '--remove-orphans', ...(options.volumes ? ['--volumes'] : [])]);
  }

  async services(): Promise<ServiceState[]> {
    return (await inspectServices(this.options.docker, this.options.project)).map((c) => c.state);
  }

  /** Waits until every service's container reports healthy; on timeout, says which did not and shows their logs. */
  async waitHealthy(services: readonly string[], timeoutMs: number): Promise<ServiceState[]> {
    const now = this.options.clock ?? Date.now;
    const deadline = now() + timeoutMs;
    for (;;) {
      const states = (await this.services()).filter((s) => services.includes(s.service));
      const pending = services.filter((name) => !states.some((s) => s.service === name && isServiceUp(s)));
      if (pending.length === 0) return states;
      if (now() > deadline) {
        const details: string[] = [];
        for (const name of pending) {
          const s = states.find((x) => x.service === name);
          details.push(`${name}: ${s ? `${s.state}, health ${s.health}` : 'no container'}`);
          if (s) details.push(...(await this.logTail(s.containerId)).map((l) => `  ${name} | ${l}`));
        }
        throw new UserError(`services not healthy after ${Math.round(timeoutMs / 1000)} s: ${pending.join(', ')}`, {
          nextSteps: [...details, 'Fix the cause shown in the log, then run dforge install again (it picks up where this run stopped).'],
        });
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  private async logTail(containerId: string): Promise<string[]> {
    const raw = (await this.options.docker.getContainer(containerId).logs({stdout: true, stderr: true, tail: LOG_TAIL, follow: false})) as unknown as Buffer;
    const lines = splitFrames(raw).frames.flatMap((f) => f.payload.toString('utf8').split('\n'));
    return lines.map((l) => l.trimEnd()).filter(Boolean).slice(-LOG_TAIL);
  }

  private compose(args: string[]): Promise<string> {
    const [file, ...prefix] = this.options.cli.argv as [string, ...string[]];
    const full = [...prefix, '--project-name', this.options.project, '--file', this.options.composeFile, ...args];
    return new Promise((resolve, reject) => {
      execFile(file, full, {cwd: path.dirname(this.options.composeFile), timeout: COMPOSE_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8'}, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        reject(
          new UserError(`${this.options.cli.argv.join(' ')} ${args[0]} failed: ${stderr.trim().split('\n').slice(-5).join(' / ') || err.message}`, {
            nextSteps: [`Run it by hand to see everything: ${[...this.options.cli.argv, ...full.slice(prefix.length)].join(' ')}`],
          }),
        );
      });
    });
  }
}
