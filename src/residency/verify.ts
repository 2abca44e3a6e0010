import type {Client} from 'pg';

import type {BackupRecord} from '../backup/catalog.js';
import {MANIFEST_SUFFIX, type BackupManifest} from '../backup/catalog.js';
import type {BackupDestination, DestinationPlacement} from '../backup/backup-destination.js';
import {destinationFor} from '../backup/destination.js';
import {attributeObject, wrapperFor} from '../backup/verify.js';
import type {ControlPlane} from '../control/plane.js';
import {UsageError, UserError} from '../errors.js';
import {jurisdictionOf} from './policy.js';

/**
 * `residency report --verify`: the records say where data lives; this asks the live systems.
 * Each cluster tells its system identifier (pg_control_system(), fixed at initdb: another
 * identifier behind the same name is another server, wherever it runs), each destination where its
 * storage is (device and mount, or endpoint, bucket and bucket location), and every object in every
 * destination is opened to learn, from its authenticated header, whose data it is. The first run
 * records the identities as the baseline (residency_fingerprints in dforge_control); later runs
 * compare, and a change is drift until the operator accepts it by name.
 */

export type FindingKind =
  /** (a) A cluster answers with another system identifier than the one recorded. */
  | 'cluster-identity-changed'
  /** (b) A destination's storage is somewhere else than recorded. */
  | 'destination-location-changed'
  /** (c) An object in a destination is a backup of a tenant of another region. */
  | 'object-outside-region'
  /** (c) An object that does not authenticate as a dforge backup: its owner and region are unknown. */
  | 'object-unreadable'
  /** (d) The catalog lists a backup whose object is gone. */
  | 'catalog-object-missing'
  /** A cluster or destination could not be asked: nothing about it is proven. */
  | 'unverifiable';

export interface ResidencyFinding {
  readonly kind: FindingKind;
  /** `cluster:NAME`, `destination:NAME` or `backup:ID`. */
  readonly subject: string;
  readonly message: string;
  /** For object findings: the object, the tenant its header names, and the two regions. */
  readonly location: string | null;
  readonly tenant: string | null;
  readonly tenantRegion: string | null;
  readonly foundInRegion: string | null;
}

export type FingerprintStatus = 'baseline-recorded' | 'unchanged' | 'changed' | 'accepted' | 'unverifiable';

export interface ClusterCheck {
  readonly name: string;
  readonly region: string;
  readonly systemIdentifier: string | null;
  /** inet_server_addr():inet_server_port() as the server sees the session. */
  readonly serverAddress: string | null;
  readonly recorded: string | null;
  readonly status: FingerprintStatus;
}

export interface DestinationCheck {
  readonly name: string;
  readonly region: string;
  readonly placement: DestinationPlacement | null;
  /** The fingerprint compared: device and mount point, or endpoint, bucket and location. */
  readonly fingerprint: string | null;
  readonly recorded: string | null;
  readonly status: FingerprintStatus;
  /** Objects listed in it, manifests included. */
  readonly objects: number;
}

export interface AcceptedDrift {
  readonly kind: 'cluster' | 'destination';
  readonly name: string;
  readonly from: string;
  readonly to: string;
}

export interface ResidencyVerification {
  readonly verifiedAt: string;
  /** True when this run recorded a baseline for at least one cluster or destination. */
  readonly baselineRecorded: boolean;
  readonly clusters: ClusterCheck[];
  readonly destinations: DestinationCheck[];
  readonly objectsScanned: number;
  readonly findings: ResidencyFinding[];
  /** Identity changes the operator accepted on this run (--accept-drift), now the baseline. */
  readonly accepted: AcceptedDrift[];
  /** Not findings, but worth an auditor's eye: e.g. backups of shredded tenants, unattributable by design. */
  readonly notes: string[];
  /** True when any finding stands: `report --verify` then exits 3. */
  readonly drift: boolean;
}

type Kind = 'cluster' | 'destination';

async function recordedFingerprints(control: Client): Promise<Map<string, string>> {
  const rows = await control.query<{kind: Kind; name: string; value: string}>('SELECT kind, name, value FROM residency_fingerprints').catch((err: {code?: string}) => {
    // undefined_table: dforge_control predates migration 5.
    if (err.code !== '42P01') throw err;
    throw new UserError('dforge_control has no residency_fingerprints table yet (its schema predates this dforge)', {
      nextSteps: ['Migrate the control schema: dforge db init (embedded) or dforge upgrade (compose, k8s), then re-run.'],
    });
  });
  return new Map(rows.rows.map((r) => [`${r.kind}:${r.name}`, r.value]));
}

/** Inserts a baseline or moves one to a new accepted value (first_seen restarts), or notes it was seen again. */
async function saveFingerprint(control: Client, kind: Kind, name: string, value: string, at: Date, replace: boolean): Promise<void> {
  await control.query(
    `INSERT INTO residency_fingerprints (kind, name, value, first_seen, last_seen) VALUES ($1, $2, $3, $4, $4)
     ON CONFLICT (kind, name) DO UPDATE SET
       value = CASE WHEN $5 THEN EXCLUDED.value ELSE residency_fingerprints.value END,
       first_seen = CASE WHEN $5 THEN EXCLUDED.first_seen ELSE residency_fingerprints.first_seen END,
       last_seen = EXCLUDED.last_seen`,
    [kind, name, value, at.toISOString(), replace],
  );
}

/** What identifies a destination's storage; the path itself is dforge.yaml's, not the storage's. */
function placementFingerprint(p: DestinationPlacement): string {
  return p.kind === 'local' ? `local device=${p.device} mount=${p.mountPoint ?? '-'}` : `s3 endpoint=${p.endpoint} bucket=${p.bucket} location=${p.location ?? '-'}`;
}

const finding = (kind: FindingKind, subject: string, message: string, more: Partial<Pick<ResidencyFinding, 'location' | 'tenant' | 'tenantRegion' | 'foundInRegion'>> = {}): ResidencyFinding => ({
  kind,
  subject,
  message,
  location: more.location ?? null,
  tenant: more.tenant ?? null,
  tenantRegion: more.tenantRegion ?? null,
  foundInRegion: more.foundInRegion ?? null,
});

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/**
 * Runs the live checks. `catalog` is the backups table; `approvedObjects` are `destination:location`
 * of catalogued backups outside their region that an approved exception covers (the report decides
 * that, see placeBackups). `accept` names clusters or destinations whose changed identity the
 * operator accepts on this run.
 */
export async function verifyResidency(
  plane: Pick<ControlPlane, 'config' | 'control' | 'provisionerOn' | 'dataKeys' | 'keys'>,
  options: {catalog: readonly BackupRecord[]; approvedObjects: ReadonlySet<string>; regionOfTenant: ReadonlyMap<string, string>; accept?: readonly string[]; clock?: () => Date},
): Promise<ResidencyVerification> {
  const config = plane.config;
  const now = (options.clock ?? (() => new Date()))();
  const accept = new Set(options.accept ?? []);
  const known = new Set([...Object.values(config.regions).flatMap((r) => [...r.clusters.map((c) => c.name), ...(r.backup?.destinations ?? []).map((d) => d.name)])]);
  for (const name of accept) {
    if (!known.has(name)) throw new UsageError(`--accept-drift ${name}: no cluster or destination of that name in dforge.yaml`, {nextSteps: [`Declared: ${[...known].join(', ')}`]});
  }
  const recorded = await recordedFingerprints(plane.control);
  const findings: ResidencyFinding[] = [];
  const notes: string[] = [];
  const acceptedDrift: AcceptedDrift[] = [];
  const usedAccept = new Set<string>();
  let baselineRecorded = false;

  /** Compares a live value with the recorded one and stores the outcome. */
  const compare = async (kind: Kind, name: string, value: string, describe: (from: string) => string): Promise<{recorded: string | null; status: FingerprintStatus}> => {
    const before = recorded.get(`${kind}:${name}`) ?? null;
    if (before === null) {
      await saveFingerprint(plane.control, kind, name, value, now, false);
      baselineRecorded = true;
      return {recorded: null, status: 'baseline-recorded'};
    }
    if (before === value) {
      await saveFingerprint(plane.control, kind, name, value, now, false);
      return {recorded: before, status: 'unchanged'};
    }
    if (accept.has(name)) {
      await saveFingerprint(plane.control, kind, name, value, now, true);
      acceptedDrift.push({kind, name, from: before, to: value});
      usedAccept.add(name);
      return {recorded: before, status: 'accepted'};
    }
    findings.push(finding(kind === 'cluster' ? 'cluster-identity-changed' : 'destination-location-changed', `${kind}:${name}`, describe(before)));
    return {recorded: before, status: 'changed'};
  };

  const clusters: ClusterCheck[] = [];
  for (const [region, r] of Object.entries(config.regions)) {
    for (const c of r.clusters) {
      let live: {id: string; address: string | null};
      try {
        const client = await plane.provisionerOn(c.name);
        try {
          const row = (
            await client.query<{id: string; addr: string | null; port: number | null}>('SELECT system_identifier::text AS id, host(inet_server_addr()) AS addr, inet_server_port() AS port FROM pg_control_system()')
          ).rows[0]!;
          live = {id: row.id, address: row.addr === null ? null : `${row.addr}:${row.port}`};
        } finally {
          await client.end().catch(() => undefined);
        }
      } catch (err) {
        findings.push(finding('unverifiable', `cluster:${c.name}`, `cluster ${c.name} (region ${region}) could not be asked for its system identifier: ${errorText(err)}`));
        clusters.push({name: c.name, region, systemIdentifier: null, serverAddress: null, recorded: recorded.get(`cluster:${c.name}`) ?? null, status: 'unverifiable'});
        continue;
      }
      const outcome = await compare(
        'cluster',
        c.name,
        live.id,
        (from) => `cluster ${c.name} (region ${region}) answers with system identifier ${live.id}, but ${from} was recorded: this is another PostgreSQL server (re-initialised, restored elsewhere, or the address now points at another cluster)`,
      );
      clusters.push({name: c.name, region, systemIdentifier: live.id, serverAddress: live.address, ...outcome});
    }
  }

  const destinations: DestinationCheck[] = [];
  const listed = new Map<string, {destination: BackupDestination; objects: string[]; present: Set<string>}>();
  for (const [region, r] of Object.entries(config.regions)) {
    for (const d of r.backup?.destinations ?? []) {
      let destination: BackupDestination;
      let placement: DestinationPlacement;
      let objects: string[];
      try {
        destination = destinationFor(region, d, plane.keys.sealed);
        placement = await destination.where();
        // Everything the place holds, hidden files and unfinished uploads too: a name proves nothing.
        objects = await destination.list('', {everything: true});
      } catch (err) {
        findings.push(finding('unverifiable', `destination:${d.name}`, `destination ${d.name} (region ${region}) could not be asked where it is or listed: ${errorText(err)}`));
        destinations.push({name: d.name, region, placement: null, fingerprint: null, recorded: recorded.get(`destination:${d.name}`) ?? null, status: 'unverifiable', objects: 0});
        continue;
      }
      const value = placementFingerprint(placement);
      const outcome = await compare('destination', d.name, value, (from) => `destination ${d.name} (region ${region}) now stores on ${value}, but ${from} was recorded: its data may be in another place`);
      destinations.push({name: d.name, region, placement, fingerprint: value, ...outcome, objects: objects.length});
      listed.set(d.name, {destination, objects, present: new Set(objects)});
    }
  }
  for (const name of accept) {
    if (!usedAccept.has(name)) notes.push(`--accept-drift ${name}: its identity had not changed; nothing was accepted`);
  }

  // (c) Every object, attributed by its authenticated header, never by its name or location.
  let objectsScanned = 0;
  for (const {destination, objects, present} of listed.values()) {
    const here = destination.region;
    for (const location of objects) {
      objectsScanned++;
      const where = destination.describe(location);
      // A manifest carries no data; it is skipped only when it is one, for a backup beside it
      // (which is attributed by its own header). Anything else named like one is looked at.
      if (location.endsWith(MANIFEST_SUFFIX)) {
        const problem = await manifestProblem(destination, location);
        if (problem) findings.push(finding('object-unreadable', `destination:${destination.name}`, `${where} is named like a backup manifest but ${problem}, so what it holds is unknown`, {location: where, foundInRegion: here}));
        // A real manifest left without its backup holds names only; the catalog check below reports a missing backup.
        else if (!present.has(location.slice(0, -MANIFEST_SUFFIX.length))) notes.push(`${where} is the manifest of a backup that is not there`);
        continue;
      }
      let object: Awaited<ReturnType<typeof attributeObject>>;
      try {
        object = await attributeObject(destination, location, (parsed, label) => wrapperFor(plane as ControlPlane, parsed, label));
      } catch (err) {
        // One unreadable object (permissions, a vanished file, a network error) is a finding; the scan goes on.
        findings.push(finding('unverifiable', `destination:${destination.name}`, `${where} could not be read: ${errorText(err)}`, {location: where, foundInRegion: here}));
        continue;
      }
      // Control backups carry only global data and go to every region by design.
      if (object.kind === 'control') continue;
      if (object.kind === 'unattributable') {
        notes.push(`${where} cannot be attributed: ${object.reason}`);
        continue;
      }
      if (object.kind === 'unauthentic') {
        findings.push(finding('object-unreadable', `destination:${destination.name}`, `${where} does not authenticate as a dforge backup, so whose data it is and which region it belongs to are unknown: ${object.reason}`, {location: where, foundInRegion: here}));
        continue;
      }
      if (object.region === here || options.approvedObjects.has(`${destination.name}:${location}`)) continue;
      findings.push(
        finding(
          'object-outside-region',
          `destination:${destination.name}`,
          `${where} is a backup of tenant ${object.tenant} of region ${object.region} (${jurisdictionOf(config, object.region)}), found in destination ${destination.name} of region ${here} (${jurisdictionOf(config, here)}), and no approved exception covers it`,
          {location: where, tenant: object.tenant, tenantRegion: options.regionOfTenant.get(object.tenant) ?? object.region, foundInRegion: here},
        ),
      );
    }
  }

  // (d) Every catalogued backup still has its object.
  for (const b of options.catalog) {
    const entry = listed.get(b.destination);
    if (entry?.present.has(b.location)) continue;
    if (!entry && destinations.some((d) => d.name === b.destination)) continue; // unverifiable: already a finding
    findings.push(
      finding(
        'catalog-object-missing',
        `backup:${b.id}`,
        entry
          ? `the catalog lists backup ${b.id} of ${b.tenant} at ${entry.destination.describe(b.location)}, but destination ${b.destination} has no such object`
          : `the catalog lists backup ${b.id} of ${b.tenant} in destination ${b.destination}, which dforge.yaml no longer declares`,
        {location: b.location, tenant: b.tenant, tenantRegion: b.region},
      ),
    );
  }

  return {verifiedAt: now.toISOString(), baselineRecorded, clusters, destinations, objectsScanned, findings, accepted: acceptedDrift, notes, drift: findings.length > 0};
}

/** Why an object named like a manifest is not the manifest of the backup its name says; null when it is. */
async function manifestProblem(destination: BackupDestination, location: string): Promise<string | null> {
  let manifest: Partial<BackupManifest>;
  try {
    manifest = JSON.parse(await destination.readSmall(location)) as Partial<BackupManifest>;
  } catch (err) {
    return `is not one (${errorText(err)})`;
  }
  return manifest.format === 'dforge-backup-manifest/1' && manifest.location === location.slice(0, -MANIFEST_SUFFIX.length) ? null : 'is not one';
}
