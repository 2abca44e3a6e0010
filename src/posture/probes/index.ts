import type {RegisteredProbe} from '../service.js';
import {AT_REST_CHECKS, atRestProbe} from './at-rest.js';
import {AUDIT_TRAIL_CHECKS, auditTrailProbe} from './audit-trail.js';
import {BACKUPS_CHECKS, backupsProbe} from './backups.js';
import {ISOLATION_CHECKS, isolationProbe} from './isolation.js';
import {KEYS_CHECKS, keysProbe} from './keys.js';
import {PROVISIONER_CHECKS, provisionerProbe} from './provisioner.js';
import {RESIDENCY_CHECKS, residencyProbe} from './residency.js';
import {RUNTIME_CHECKS, runtimeProbe} from './runtime.js';
import {SELF_HOST_CHECKS, selfHostProbe} from './self-host.js';
import {TRANSIT_CHECKS, transitProbe} from './transit.js';

/** Every probe posture runs; they run at once, each bounding its connections through ctx.limit. */
export const PROBES: readonly RegisteredProbe[] = [
  {name: 'isolation', checks: ISOLATION_CHECKS, probe: isolationProbe},
  {name: 'provisioner', checks: PROVISIONER_CHECKS, probe: provisionerProbe},
  {name: 'audit-trail', checks: AUDIT_TRAIL_CHECKS, probe: auditTrailProbe},
  {name: 'at-rest', checks: AT_REST_CHECKS, probe: atRestProbe},
  {name: 'in-transit', checks: TRANSIT_CHECKS, probe: transitProbe},
  {name: 'self-host', checks: SELF_HOST_CHECKS, probe: selfHostProbe},
  {name: 'residency', checks: RESIDENCY_CHECKS, probe: residencyProbe},
  {name: 'backups', checks: BACKUPS_CHECKS, probe: backupsProbe},
  {name: 'keys', checks: KEYS_CHECKS, probe: keysProbe},
  {name: 'runtime', checks: RUNTIME_CHECKS, probe: runtimeProbe},
];

/** Every check id this dforge can report: waivers naming anything else are refused. */
export const KNOWN_CHECKS: ReadonlySet<string> = new Set(PROBES.flatMap((p) => p.checks.map((c) => c.id)));
