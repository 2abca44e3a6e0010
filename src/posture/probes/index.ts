import type {RegisteredProbe} from '../service.js';
import {SELF_HOST_CHECKS, selfHostProbe} from './self-host.js';

/** Every probe posture runs, in panel order. */
export const PROBES: readonly RegisteredProbe[] = [{name: 'self-host', checks: SELF_HOST_CHECKS, probe: selfHostProbe}];

/** Every check id this dforge can report: waivers naming anything else are refused. */
export const KNOWN_CHECKS: ReadonlySet<string> = new Set(PROBES.flatMap((p) => p.checks.map((c) => c.id)));
