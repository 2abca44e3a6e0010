import {promises as fs} from 'node:fs';
import path from 'node:path';

import type {Client} from 'pg';

import {recordOps} from '../audit/record.js';
import {BackupCatalog, type BackupRecord} from '../backup/catalog.js';
import {destinationsOf} from '../backup/destination.js';
import type {DforgeConfig} from '../config/schema.js';
import {clusterAddress} from '../control/clusters.js';
import type {ControlPlane} from '../control/plane.js';
import {UsageError, UserError} from '../errors.js';
import {describeWriteError, writeFileStreamed} from '../state/atomic-file.js';
import {MoveJournal, type MoveRecord} from '../tenants/move-journal.js';
import type {Tenant} from '../tenants/registry.js';
import {formatBytes} from '../ui/bytes.js';
import {terminalSafe} from '../ui/terminal-safe.js';
import {jurisdictionOf, type CrossRegionOperation} from './policy.js';
import {verifyResidency, type ResidencyVerification} from './verify.js';

/**
 * What `dforge residency show` and `residency report` tell an operator and an auditor: where each
 * region's clusters and destinations are, where each tenant and each of its backups lives, and
 * every transfer that crossed a region, with its reason. Everything here is read from
 * dforge_control and dforge.yaml; `--verify` (./verify.ts) then asks the live systems.
 */

/**
 * What dforge keeps in one place for the whole install, and what never leaves its region. Quoted
 * by the report and by docs/residency.md, so the two cannot say different things.
 */
export const RESIDENCY_SCOPE = {
  global: [
    'tenant names (slugs) and their status',
    'region and cluster pins of each tenant',
    'cluster and destination names',
    "sealed credentials (tenant and cluster passwords, under the master key) and wrapped data keys (a tenant's data key, wrapped by the master key, never its plaintext)",
    'the backup catalog metadata (backup id, tenant, region, destination, location, size, checksum, times), not the backups',
    'the ops log (who did what, when, with which reason)',
  ],
  regional: [
    "tenant databases (every row of a tenant's data), on a cluster of the tenant's region",
    "their dumps and encrypted backups, in a destination of the tenant's region",
    "their change log (the audit trail inside each tenant database)",
  ],
  note: 'dforge_control lives on the first cluster of the primary region; control backups carry only the global data above and go to every region by design.',
} as const;

export interface ClusterView {
  readonly name: string;
  readonly kind: 'embedded' | 'bundled' | 'external';
  /** host:port as dforge reaches it. */
  readonly address: string;
  /** maxTenants, or null for no limit. */
  readonly capacity: number | null;
  readonly tenants: number;
}

export interface DestinationView {
  readonly name: string;
  readonly kind: 'local' | 's3';
  /** The configured place: a directory, or endpoint/bucket/prefix. */
  readonly where: string;
}

export interface RegionView {
  readonly name: string;
  readonly jurisdiction: string;
  readonly primary: boolean;
  readonly clusters: ClusterView[];
  readonly destinations: DestinationView[];
}

export interface TenantPin {
  readonly slug: string;
  readonly region: string;
  readonly jurisdiction: string;
  readonly cluster: string;
  readonly status: Tenant['status'];
}

export interface ResidencyShow {
  readonly regions: RegionView[];
  readonly tenants: TenantPin[];
}

export interface BackupObject {
  readonly id: string;
  readonly destination: string;
  /** The destination's region, or null when dforge.yaml no longer declares the destination. */
  readonly destinationRegion: string | null;
  readonly location: string;
  readonly size: number;
  readonly createdAt: string;
  /** The destination is not in the tenant's region (or is undeclared). */
  readonly outsideRegion: boolean;
  /** For an object outside its region: the ops-log seq of the approved exception that covers it, if any. */
  readonly approvedBy: number | null;
}

export interface TenantResidency extends TenantPin {
  readonly backups: BackupObject[];
}

/** An approved transfer: an ops-log `residency.cross-region` entry. */
export interface CrossRegionEvent {
  readonly seq: number;
  readonly at: string;
  readonly actor: string;
  readonly tenant: string;
  readonly operation: CrossRegionOperation | string;
  readonly what: string;
  readonly fromRegion: string;
  readonly fromJurisdiction: string;
  readonly toRegion: string;
  readonly toJurisdiction: string;
  readonly reason: string;
}


export interface ResidencyReport {
  /** /2: `moves` are the journal's records (with both clusters and the purge), no longer ops-log events. */
  readonly format: 'dforge-residency-report/2';
  readonly generatedAt: string;
  readonly domain: string;
  readonly primaryRegion: string;
  readonly scope: {readonly global: readonly string[]; readonly regional: readonly string[]; readonly note: string};
  readonly regions: RegionView[];
  readonly tenants: TenantResidency[];
  /** Control backups (global data only), where each one lives. */
  readonly controlBackups: Array<{id: string; destination: string; destinationRegion: string | null; location: string; size: number; createdAt: string}>;
  readonly crossRegionEvents: CrossRegionEvent[];
  /** Every tenant move from its journal (control table tenant_moves), within a region or across one. */
  readonly moves: MoveRecord[];
  readonly summary: {
    readonly tenants: number;
    readonly tenantsByRegion: Record<string, number>;
    readonly backups: number;
    /** Catalogued tenant backups whose destination is outside the tenant's region. */
    readonly backupsOutsideRegion: number;
    /** Of those, how many no approved exception covers. */
    readonly unapprovedOutsideRegion: number;
    readonly crossRegionEvents: number;
  };
  /** The live checks of --verify; null when the report was built from the records alone. */
  readonly verification: ResidencyVerification | null;
}


const hostPort = (a: {host: string; port: number}): string => `${a.host}:${a.port}`;

function regionsView(config: DforgeConfig, tenants: readonly Tenant[]): RegionView[] {
  const perCluster = new Map<string, number>();
  for (const t of tenants) perCluster.set(t.cluster, (perCluster.get(t.cluster) ?? 0) + 1);
  return Object.entries(config.regions).map(([name, r]) => ({
    name,
    jurisdiction: jurisdictionOf(config, name),
    primary: name === config.primaryRegion,
    clusters: r.clusters.map((c) => ({name: c.name, kind: c.kind, address: hostPort(clusterAddress(config, c)), capacity: c.maxTenants ?? null, tenants: perCluster.get(c.name) ?? 0})),
    destinations: (r.backup?.destinations ?? []).map((d) => ({
      name: d.name,
      kind: d.kind,
      where: d.kind === 'local' ? d.path : `${d.endpoint.replace(/\/$/, '')}/${d.bucket}${d.prefix ? `/${d.prefix}` : ''}`,
    })),
  }));
}

const pinOf = (config: DforgeConfig, t: Tenant): TenantPin => ({slug: t.slug, region: t.region, jurisdiction: jurisdictionOf(config, t.region), cluster: t.cluster, status: t.status});

/** `residency show`: regions with their clusters and destinations, and every tenant's pin. */
export async function residencyShow(plane: Pick<ControlPlane, 'config' | 'tenants'>): Promise<ResidencyShow> {
  const tenants = await plane.tenants.list();
  return {regions: regionsView(plane.config, tenants), tenants: tenants.map((t) => pinOf(plane.config, t))};
}

interface LogRow {
  seq: string;
  at: Date;
  actor: string;
  action: string;
  target: string;
  outcome: string;
  details: Record<string, unknown>;
}

/**
 * The ops-log entries the record of transfers is made of. Only these rows are read: an install's
 * log grows without bound, the exceptions and moves stay few.
 */
export async function residencyEvents(control: Client, config: DforgeConfig): Promise<CrossRegionEvent[]> {
  const rows = await control.query<LogRow>(`SELECT seq, at, actor, action, target, outcome, details FROM ops_log WHERE action = 'residency.cross-region' ORDER BY seq`);
  const text = (v: unknown): string => (typeof v === 'string' ? v : '');
  return rows.rows.map((r) => {
    const d = r.details ?? {};
    const fromRegion = text(d.fromRegion);
    const toRegion = text(d.toRegion);
    return {
        seq: Number(r.seq),
        at: r.at.toISOString(),
        actor: r.actor,
        tenant: r.target.replace(/^tenant:/, ''),
        operation: text(d.operation),
        what: text(d.what),
        fromRegion,
        fromJurisdiction: text(d.fromJurisdiction) || jurisdictionOf(config, fromRegion),
        toRegion,
        toJurisdiction: text(d.toJurisdiction) || jurisdictionOf(config, toRegion),
        reason: text(d.reason),
    };
  });
}

/**
 * The approved exception that covers a backup stored outside its tenant's region: a crossing of
 * that tenant into the destination's region, for a backup or a move, recorded before the backup.
 */
function coveringException(crossings: readonly CrossRegionEvent[], tenant: string, toRegion: string | null, createdAt: string): number | null {
  if (toRegion === null) return null;
  const at = Date.parse(createdAt);
  const match = crossings.filter((c) => c.tenant === tenant && c.toRegion === toRegion && (c.operation === 'backup' || c.operation === 'move') && Date.parse(c.at) <= at).at(-1);
  return match?.seq ?? null;
}

/** The catalogued backups of each tenant, flagged when they sit outside the tenant's region. */
export function placeBackups(config: DforgeConfig, tenants: readonly Tenant[], backups: readonly BackupRecord[], crossings: readonly CrossRegionEvent[]): {tenants: TenantResidency[]; control: ResidencyReport['controlBackups']} {
  const destinations = destinationsOf(config);
  const byTenant = new Map<string, BackupObject[]>();
  const control: ResidencyReport['controlBackups'] = [];
  const regionOf = new Map(tenants.map((t) => [t.slug, t.region]));
  // Oldest first, as a record reads.
  for (const b of [...backups].sort((x, y) => x.createdAt.localeCompare(y.createdAt) || x.id.localeCompare(y.id))) {
    const destinationRegion = destinations.get(b.destination)?.region ?? null;
    if (b.kind === 'control') {
      control.push({id: b.id, destination: b.destination, destinationRegion, location: b.location, size: b.size, createdAt: b.createdAt});
      continue;
    }
    const tenantRegion = regionOf.get(b.tenant) ?? b.region;
    const outsideRegion = destinationRegion !== tenantRegion;
    const list = byTenant.get(b.tenant) ?? [];
    list.push({
      id: b.id,
      destination: b.destination,
      destinationRegion,
      location: b.location,
      size: b.size,
      createdAt: b.createdAt,
      outsideRegion,
      approvedBy: outsideRegion ? coveringException(crossings, b.tenant, destinationRegion, b.createdAt) : null,
    });
    byTenant.set(b.tenant, list);
  }
  return {tenants: tenants.map((t) => ({...pinOf(config, t), backups: byTenant.get(t.slug) ?? []})), control};
}

export interface ResidencyReportOptions {
  /** Ask the live systems too (./verify.ts). */
  readonly verify?: boolean;
  /** Clusters or destinations whose changed identity the operator accepts on this run (with verify). */
  readonly accept?: readonly string[];
  readonly clock?: () => Date;
}

/** Builds the record from dforge_control and dforge.yaml, and with `verify` checks it against the live systems. */
export async function buildResidencyReport(plane: Pick<ControlPlane, 'config' | 'tenants' | 'control' | 'provisionerOn' | 'dataKeys' | 'keys'>, options: ResidencyReportOptions = {}): Promise<ResidencyReport> {
  if ((options.accept?.length ?? 0) > 0 && !options.verify) {
    throw new UsageError('--accept-drift only applies with --verify', {nextSteps: ['Re-run with --verify --accept-drift NAME: the new identity is checked live, then recorded as the baseline.']});
  }
  const config = plane.config;
  const clock = options.clock ?? (() => new Date());
  // The record is as of its start: the live checks come after it.
  const generatedAt = clock().toISOString();
  const tenants = await plane.tenants.list();
  const backups = await new BackupCatalog(plane.control).list();
  const crossings = await residencyEvents(plane.control, config);
  const moves = await new MoveJournal(plane.control).all();
  const placed = placeBackups(config, tenants, backups, crossings);
  const outside = placed.tenants.flatMap((t) => t.backups.filter((b) => b.outsideRegion));
  const tenantsByRegion: Record<string, number> = Object.fromEntries(Object.keys(config.regions).map((r) => [r, 0]));
  for (const t of tenants) tenantsByRegion[t.region] = (tenantsByRegion[t.region] ?? 0) + 1;
  const verification = options.verify
    ? await verifyResidency(plane, {
        catalog: backups,
        approvedObjects: new Set(outside.filter((b) => b.approvedBy !== null).map((b) => `${b.destination}:${b.location}`)),
        regionOfTenant: new Map(tenants.map((t) => [t.slug, t.region])),
        accept: options.accept,
        clock,
      })
    : null;
  return {
    format: 'dforge-residency-report/2',
    generatedAt,
    domain: config.domain,
    primaryRegion: config.primaryRegion,
    scope: RESIDENCY_SCOPE,
    regions: regionsView(config, tenants),
    tenants: placed.tenants,
    controlBackups: placed.control,
    crossRegionEvents: crossings,
    moves,
    summary: {
      tenants: tenants.length,
      tenantsByRegion,
      backups: placed.tenants.reduce((n, t) => n + t.backups.length, 0),
      backupsOutsideRegion: outside.length,
      unapprovedOutsideRegion: outside.filter((b) => b.approvedBy === null).length,
      crossRegionEvents: crossings.length,
    },
    verification,
  };
}

export type ReportFormat = 'md' | 'json';

export interface ResidencyReportRun {
  readonly report: ResidencyReport;
  readonly format: ReportFormat;
  /** The file written, or null when the document went to stdout. */
  readonly out: string | null;
  /** The ops-log entry of this run. */
  readonly opsLogSeq: number | null;
}

/**
 * `residency report`: builds the record, writes it to `out` if given, and records the run in the
 * ops log (action residency.report, with what was verified and any drift accepted). The file is
 * 0600: it is not a secret, but it names tenants and the reasons for transfers (personal-data
 * metadata), so it is handed to the auditor on purpose, not left readable to every local user.
 */
export async function residencyReport(
  plane: ControlPlane,
  options: ResidencyReportOptions & {format: ReportFormat; out?: string; force?: boolean},
): Promise<ResidencyReportRun & {document: string}> {
  const out = options.out === undefined ? null : path.resolve(options.out);
  // Refused before anything is measured or recorded: a refused run leaves no baseline behind.
  if (out !== null && !options.force && (await fs.lstat(out).then(() => true, () => false))) {
    throw new UserError(`${out} already exists; the residency report does not overwrite a record`, {nextSteps: ['Write to a new file (the report carries its generation time), or add --force to replace it.']});
  }
  let report: ResidencyReport;
  let document: string;
  try {
    report = await buildResidencyReport(plane, options);
    document = options.format === 'json' ? `${JSON.stringify(report, null, 2)}\n` : residencyMarkdown(report);
    if (out !== null) await writeReport(out, document, options.force === true);
  } catch (err) {
    // A run that was asked for and broke is on the record too; a mistyped command line is not a run.
    if (!(err instanceof UsageError)) {
      await recordOps(plane, {action: 'residency.report', target: 'install', outcome: 'failed', details: {error: err instanceof Error ? err.message : String(err), out}}, options.clock?.());
    }
    throw err;
  }
  const v = report.verification;
  const entry = await recordOps(
    plane,
    {
      action: 'residency.report',
      target: 'install',
      outcome: v?.drift ? 'failed' : 'ok',
      details: {
        format: options.format,
        out,
        tenants: report.summary.tenants,
        backups: report.summary.backups,
        backupsOutsideRegion: report.summary.backupsOutsideRegion,
        crossRegionEvents: report.summary.crossRegionEvents,
        verified: v !== null,
        ...(v ? {baselineRecorded: v.baselineRecorded, findings: v.findings.map((f) => `${f.kind} ${f.subject}`), acceptedDrift: v.accepted} : {}),
      },
    },
    options.clock?.(),
  );
  return {report, format: options.format, out, opsLogSeq: entry?.seq ?? null, document};
}

async function writeReport(out: string, document: string, force: boolean): Promise<void> {
  try {
    await writeFileStreamed(out, (write) => write(Buffer.from(document, 'utf8')), {mode: 0o600, exclusive: !force});
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UserError(`${out} appeared while the report was being built; it was not overwritten`, {nextSteps: ['Write to a new file, or add --force.']});
    throw describeWriteError(err, out);
  }
}

/** A table cell or list item: operator text (reasons) cannot break the table or drive a terminal. */
const cell = (text: string): string => terminalSafe(text).replace(/\|/g, '\\|');
const mdTable = (headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string[] => [
  `| ${headers.join(' | ')} |`,
  `| ${headers.map(() => '---').join(' | ')} |`,
  ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
];

/**
 * The report as a GDPR Art. 30(1)(e) record: "where applicable, transfers of personal data to a
 * third country ... including the identification of that third country". A transfer here is data
 * of a tenant leaving its region's jurisdiction; each one dforge allowed was approved with a reason
 * and is listed, and anything the live check found outside its region is listed as a finding.
 */
export function residencyMarkdown(r: ResidencyReport): string {
  const lines: string[] = [
    `# Data residency record: ${r.domain}`,
    '',
    `Generated ${r.generatedAt} by dforge (format ${r.format}). Primary region: ${r.primaryRegion} (holds dforge_control).`,
    '',
    '## Scope',
    '',
    'Held once for the whole install, in dforge_control:',
    '',
    ...r.scope.global.map((g) => `- ${g}`),
    '',
    'Never leaves its region:',
    '',
    ...r.scope.regional.map((g) => `- ${g}`),
    '',
    r.scope.note,
    '',
    '## Regions',
    '',
  ];
  for (const region of r.regions) {
    lines.push(`### ${region.name} (jurisdiction ${region.jurisdiction})${region.primary ? ', primary' : ''}`, '');
    lines.push(...mdTable(['cluster', 'kind', 'address', 'capacity', 'tenants'], region.clusters.map((c) => [c.name, c.kind, c.address, c.capacity === null ? 'unlimited' : String(c.capacity), String(c.tenants)])), '');
    lines.push(...(region.destinations.length === 0 ? ['No backup destinations.'] : mdTable(['destination', 'kind', 'where'], region.destinations.map((d) => [d.name, d.kind, d.where]))), '');
  }
  const outside = r.tenants.flatMap((t) => t.backups.filter((b) => b.outsideRegion).map((b) => ({t, b})));
  lines.push('## Transfers of personal data to a third country (Art. 30(1)(e))', '');
  if (r.crossRegionEvents.length === 0 && outside.length === 0) {
    lines.push('Transfers of personal data to a third country: none. No tenant data was approved to leave its region, and the catalog lists no backup outside its tenant\'s region.');
  } else {
    if (r.crossRegionEvents.length === 0) lines.push('Approved exceptions: none.');
    else {
      lines.push(`Approved exceptions (${r.crossRegionEvents.length}), each allowed for one run with --allow-cross-region and a reason, recorded in the ops log before any data moved:`, '');
      lines.push(
        ...mdTable(
          ['ops-log seq', 'at', 'actor', 'tenant', 'operation', 'from', 'to (third country)', 'reason'],
          r.crossRegionEvents.map((e) => [String(e.seq), e.at, e.actor, e.tenant, e.operation, `${e.fromRegion} (${e.fromJurisdiction})`, `${e.toRegion} (${e.toJurisdiction})`, e.reason]),
        ),
      );
    }
    if (outside.length > 0) {
      lines.push('', `Backups stored outside their tenant's region (${outside.length}):`, '');
      lines.push(...mdTable(['tenant', 'backup', 'destination', 'in region', 'approved by'], outside.map(({t, b}) => [t.slug, b.id, b.destination, b.destinationRegion ?? 'undeclared', b.approvedBy === null ? 'NO APPROVAL' : `ops-log seq ${b.approvedBy}`])));
    }
  }
  lines.push('');
  if (r.moves.length > 0) {
    lines.push('## Tenant moves', '');
    const where = (region: string, cluster: string): string => `${region} (${r.regions.find((x) => x.name === region)?.jurisdiction ?? 'no longer declared'}) / ${cluster}`;
    lines.push(
      ...mdTable(
        ['move', 'tenant', 'from', 'to', 'state', 'approval reason', 'started', 'finished', 'source purged'],
        r.moves.map((m) => [`#${m.id}`, m.slug, where(m.fromRegion, m.fromCluster), where(m.toRegion, m.toCluster), m.state, m.approvalReason ?? '-', m.startedAt, m.finishedAt ?? '-', m.sourcePurgedAt ?? '-']),
      ),
      '',
    );
  }
  lines.push('## Tenants', '');
  const summary = Object.entries(r.summary.tenantsByRegion).map(([region, n]) => `${region}: ${n}`).join(', ');
  lines.push(`${r.summary.tenants} tenants (${summary}); ${r.summary.backups} catalogued backups, ${r.summary.backupsOutsideRegion} outside their region.`, '');
  lines.push(...mdTable(['tenant', 'region', 'jurisdiction', 'cluster', 'status', 'backups'], r.tenants.map((t) => [t.slug, t.region, t.jurisdiction, t.cluster, t.status, String(t.backups.length)])), '');
  const backups = r.tenants.flatMap((t) => t.backups.map((b) => ({t, b})));
  if (backups.length > 0) {
    lines.push('### Backup objects', '');
    lines.push(
      ...mdTable(
        ['tenant', 'backup', 'destination', 'region', 'location', 'size', 'created', 'in tenant region'],
        backups.map(({t, b}) => [t.slug, b.id, b.destination, b.destinationRegion ?? 'undeclared', b.location, formatBytes(b.size), b.createdAt, b.outsideRegion ? (b.approvedBy === null ? 'NO' : `no (approved, seq ${b.approvedBy})`) : 'yes']),
      ),
      '',
    );
  }
  if (r.controlBackups.length > 0) {
    lines.push('### Control backups (global data only)', '');
    lines.push(...mdTable(['backup', 'destination', 'region', 'size', 'created'], r.controlBackups.map((b) => [b.id, b.destination, b.destinationRegion ?? 'undeclared', formatBytes(b.size), b.createdAt])), '');
  }
  lines.push('## Live verification', '');
  const v = r.verification;
  if (!v) lines.push('Not run: this record is built from dforge_control and dforge.yaml. Run dforge residency report --verify to check it against the live clusters and destinations.');
  else {
    lines.push(`Verified ${v.verifiedAt}: ${v.clusters.length} cluster(s), ${v.destinations.length} destination(s), ${v.objectsScanned} object(s) opened.${v.baselineRecorded ? ' A baseline was recorded on this run for what had none.' : ''}`, '');
    lines.push(...mdTable(['cluster', 'region', 'system identifier', 'server address', 'status'], v.clusters.map((c) => [c.name, c.region, c.systemIdentifier ?? '-', c.serverAddress ?? '-', c.status])), '');
    lines.push(...mdTable(['destination', 'region', 'storage', 'objects', 'status'], v.destinations.map((d) => [d.name, d.region, d.fingerprint ?? '-', String(d.objects), d.status])), '');
    for (const a of v.accepted) lines.push(`- Accepted by the operator on this run: ${a.kind} ${a.name} changed from "${a.from}" to "${a.to}".`);
    if (v.findings.length === 0) lines.push('Findings: none. Every cluster and destination is the one recorded, every object is in its region, every catalogued object exists.');
    else {
      lines.push(`Findings (${v.findings.length}):`, '');
      for (const f of v.findings) lines.push(`- **${f.kind}** (${f.subject}): ${cell(f.message)}`);
    }
    for (const n of v.notes) lines.push(`- Note: ${cell(n)}`);
  }
  lines.push('');
  return lines.join('\n');
}

