import type {DforgeConfig} from '../config/schema.js';
import {HOST_THRESHOLDS} from '../preflight/thresholds.js';
import {STACK_SERVICES, type StackService} from '../runtime/compose-stack.js';

/** The limits one compose service runs under, as the engine takes them. */
export interface ServiceLimits {
  /** Bytes of memory (mem_limit); swap is not added on top (memswap_limit is the same). */
  readonly memory: number;
  /** CPUs the container may use (NanoCpus). */
  readonly cpus: number;
  /** Most processes and threads (PidsLimit). */
  readonly pids: number;
}

const MiB = 1024 ** 2;

/**
 * Each service's part of the smallest host preflight accepts for compose (HOST_THRESHOLDS), so
 * the whole stack fits that host with a quarter of its memory left to the kernel, the engine and
 * the page cache PostgreSQL relies on. PostgreSQL gets the largest part; PIDs leave room for
 * PostgreSQL's 100 default connections (one process each) and nginx's one worker per core.
 */
const PARTS: Record<StackService, {memory: number; cpus: number; pids: number}> = {
  postgres: {memory: 3 / 8, cpus: 1 / 2, pids: 512},
  'auth-db': {memory: 1 / 8, cpus: 1 / 4, pids: 256},
  auth: {memory: 1 / 16, cpus: 1 / 4, pids: 256},
  app: {memory: 1 / 8, cpus: 1 / 2, pids: 256},
  proxy: {memory: 1 / 16, cpus: 1 / 4, pids: 256},
};

function bytesOf(size: string): number {
  const n = Number(size.slice(0, -1));
  return size.endsWith('g') ? n * 1024 * MiB : n * MiB;
}

/**
 * The limits of every service: the default part of the minimum host, with what dforge.yaml sets
 * under compose.limits.<service> taking its place.
 */
export function composeLimits(config: Pick<DforgeConfig, 'compose'>): Record<StackService, ServiceLimits> {
  const host = HOST_THRESHOLDS.compose;
  const entries = STACK_SERVICES.map((service) => {
    const part = PARTS[service];
    const set = config.compose.limits?.[service];
    const memory = set?.memory ? bytesOf(set.memory) : Math.floor((host.memoryBytes.minimum * part.memory) / MiB) * MiB;
    const cpus = set?.cpus ?? host.cpus.minimum * part.cpus;
    return [service, {memory, cpus, pids: set?.pids ?? part.pids}] as const;
  });
  return Object.fromEntries(entries) as Record<StackService, ServiceLimits>;
}
