import {promises as fs} from 'node:fs';
import path from 'node:path';

import type {Client} from 'pg';

import {PROVISIONER_ROLE} from '../../control/bootstrap.js';
import {clustersOf} from '../../control/clusters.js';
import {UserError} from '../../errors.js';
import {EMBEDDED_SUPERUSER, embeddedCluster} from '../../postgres/embedded-install.js';
import {renderHba} from '../../postgres/embedded-config.js';
import {PROVISION_SCHEMA} from '../../postgres/provisioner.js';
import {readTemplate} from '../../render/sources.js';
import {renderTextTemplate} from '../../render/template.js';
import {templateValues} from '../../render/values.js';
import type {PostureContext} from '../context.js';

/**
 * pg_hba, live: the rules the server parses from its pg_hba.conf (through the provisioning
 * interface's read-only hba_rules(), as pg_hba_file_rules is superuser-only) against the lines
 * dforge writes for that cluster, and against the policy those lines follow: scram-sha-256 or
 * reject only, and every TCP line hostssl.
 */

/** One rule, as a comparable line: `hostssl sameuser all 127.0.0.1/32 scram-sha-256`. */
export interface HbaRule {
  /** Line number in the live file; undefined for an expected rule. */
  readonly line?: number;
  readonly text: string;
  readonly type: string;
  readonly method: string;
  /** Set when the server could not parse the line. */
  readonly error?: string;
}

interface LiveRow {
  line_number: number;
  type: string | null;
  database: string[] | null;
  user_name: string[] | null;
  address: string | null;
  netmask: string | null;
  auth_method: string | null;
  options: string[] | null;
  error: string | null;
}

/** Methods that send or accept a password that is not SCRAM, or none at all. */
const WEAK_METHODS = new Set(['trust', 'password', 'md5']);
const TCP_TYPES = new Set(['host', 'hostssl', 'hostnossl', 'hostgssenc', 'hostnogssenc']);

const UNDEFINED_FUNCTION = '42883';

/** The live rules of a cluster, on a provisioner session to its `postgres` database. */
export async function liveHbaRules(c: Client): Promise<HbaRule[]> {
  let rows: LiveRow[];
  try {
    rows = (await c.query<LiveRow>(`SELECT * FROM ${PROVISION_SCHEMA}.hba_rules()`)).rows;
  } catch (err) {
    if ((err as {code?: string}).code === UNDEFINED_FUNCTION || (err as {code?: string}).code === '3F000') {
      throw new UserError('this cluster\'s provisioning interface predates hba_rules(), so its live pg_hba rules can\'t be read without the superuser', {
        nextSteps: ['Re-run the bootstrap as the superuser: dforge db init (embedded), dforge quickstart, or dforge install (compose / Kubernetes).'],
        cause: err,
      });
    }
    throw err;
  }
  return rows.map((r) => {
    const type = r.type ?? '?';
    const method = r.auth_method ?? '?';
    const address = r.address === null ? undefined : r.netmask === null ? r.address : `${r.address}/${prefixLength(r.netmask)}`;
    // hba_rules() already hides secret option values; an older definition might not.
    const fields = [type, (r.database ?? []).join(','), (r.user_name ?? []).join(','), ...(address === undefined ? [] : [address]), method, ...(r.options ?? []).map(redactSecrets)];
    return {line: r.line_number, text: fields.join(' '), type, method, ...(r.error ? {error: r.error} : {})};
  });
}

/**
 * When pg_hba.conf last changed and when the server last loaded its configuration. A file newer
 * than the load means the rules in force are not the ones posture can read.
 */
export interface HbaFileState {
  readonly modified: Date;
  readonly loaded: Date;
  /** False when `modified` has whole seconds only (pg_stat_file): a change in the load's own second can't be ordered. */
  readonly precise: boolean;
}

export async function hbaFileState(c: Client): Promise<HbaFileState> {
  try {
    const row = (await c.query<{path: string; modified: Date; loaded: Date}>(`SELECT * FROM ${PROVISION_SCHEMA}.hba_file_state()`)).rows[0]!;
    // On the cluster's own host (embedded) the same file can be stat'ed to the millisecond; it is
    // the same file only if the whole seconds agree.
    const local = await fs.stat(row.path).catch(() => undefined);
    if (local && Math.floor(local.mtimeMs / 1000) * 1000 === row.modified.getTime()) return {modified: local.mtime, loaded: row.loaded, precise: true};
    return {modified: row.modified, loaded: row.loaded, precise: false};
  } catch (err) {
    if ((err as {code?: string}).code === UNDEFINED_FUNCTION) {
      throw new UserError('this cluster\'s provisioning interface predates hba_file_state(), so whether the loaded pg_hba rules match the file can\'t be told', {
        nextSteps: ['Re-run the bootstrap as the superuser: dforge db init (embedded), dforge quickstart, or dforge install (compose / Kubernetes).'],
        cause: err,
      });
    }
    throw err;
  }
}

/** 255.255.255.0 → 24; ffff:ffff:: → 32. */
function prefixLength(netmask: string): number {
  const bits = netmask.includes(':')
    ? expandIpv6(netmask).flatMap((group) => [...group.toString(2)])
    : netmask.split('.').flatMap((octet) => [...Number(octet).toString(2)]);
  return bits.filter((b) => b === '1').length;
}

function expandIpv6(address: string): number[] {
  const [head = '', tail = ''] = address.split('::');
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const h = parse(head);
  const t = parse(tail);
  return address.includes('::') ? [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t] : h;
}

/** The rule lines of a pg_hba.conf text, in the live rules' form. */
export function parseHba(text: string): HbaRule[] {
  const rules: HbaRule[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') continue;
    const [type = '', database = '', user = '', ...rest] = line.split(/\s+/);
    // A local line has no address; host lines have one (a CIDR, a keyword like samenet or all).
    const [address, method = '', ...options] = type === 'local' ? [undefined, ...rest] : rest;
    rules.push({text: [type, database, user, ...(address === undefined ? [] : [address]), method, ...options].join(' '), type, method});
  }
  return rules;
}

/**
 * What dforge wrote into this cluster's pg_hba.conf, or undefined for an external cluster (its
 * pg_hba is the operator's: only the policy applies).
 */
export async function expectedHbaRules(ctx: PostureContext, cluster: string): Promise<HbaRule[] | undefined> {
  const entry = clustersOf(ctx.config).get(cluster);
  if (!entry) throw new UserError(`no cluster ${cluster} in ${ctx.dir.configFile}`);
  switch (entry.cluster.kind) {
    case 'embedded':
      return parseHba(renderHba(EMBEDDED_SUPERUSER, PROVISIONER_ROLE, embeddedCluster(ctx.dir, ctx.config, cluster).runDir));
    case 'bundled': {
      // The same source `dforge render` and `dforge install` use, operator overrides included.
      const target = ctx.config.target === 'k8s' ? 'k8s' : 'compose';
      const source = await readTemplate(target, 'postgres/pg_hba.conf', path.join(ctx.dir.root, 'templates'));
      return parseHba(renderTextTemplate(source.origin, source.text, templateValues(ctx.config)));
    }
    case 'external':
      return undefined;
  }
}

/** Why a rule breaks the policy, or undefined when it keeps it. */
export function policyViolation(rule: HbaRule): string | undefined {
  if (rule.error) return `the server can't parse it (${rule.error})`;
  if (rule.method === 'reject') return undefined;
  if (WEAK_METHODS.has(rule.method)) return `method ${rule.method} (only scram-sha-256 or reject)`;
  if (TCP_TYPES.has(rule.type) && rule.type !== 'hostssl') return `${rule.type} admits TCP without TLS (only hostssl)`;
  return undefined;
}

export interface HbaDrift {
  /** Live lines that are not among dforge's (or are in another place). */
  readonly extra: HbaRule[];
  /** dforge's lines the live file lacks. */
  readonly missing: HbaRule[];
  /** Same lines, other order (first match wins, so order is meaning). */
  readonly reordered: boolean;
}

export function hbaDrift(live: readonly HbaRule[], expected: readonly HbaRule[]): HbaDrift {
  const remaining = new Map<string, number>();
  for (const r of expected) remaining.set(r.text, (remaining.get(r.text) ?? 0) + 1);
  const extra: HbaRule[] = [];
  for (const r of live) {
    const n = remaining.get(r.text) ?? 0;
    if (n > 0) remaining.set(r.text, n - 1);
    else extra.push(r);
  }
  const missing = expected.filter((r) => {
    const n = remaining.get(r.text) ?? 0;
    if (n === 0) return false;
    remaining.set(r.text, n - 1);
    return true;
  });
  // Order among the lines both have: first match wins, so moving a reject below an accept opens it.
  const kept = live.filter((r) => !extra.includes(r));
  const keptExpected = expected.filter((r) => !missing.includes(r));
  const reordered = kept.some((r, i) => r.text !== keptExpected[i]?.text);
  return {extra, missing, reordered};
}

/** Option values that are secrets (ldapbindpasswd, radiussecrets…) never reach a report. */
const SECRET_OPTION = /\b([a-z_]*(?:passw|secret)[a-z_]*)=("[^"]*"|\S+)/gi;
export const redactSecrets = (text: string): string => text.replace(SECRET_OPTION, '$1=<redacted>');

export const describeRule = (r: HbaRule): string => (r.line === undefined ? `"${redactSecrets(r.text)}"` : `line ${r.line} "${redactSecrets(r.text)}"`);
