import {promises as fs} from 'node:fs';

import {UsageError} from '../errors.js';
import type {AppliedWaiver, CheckResult} from './check.js';

/**
 * Waivers: an operator's signed-off exception to a check, in a file they keep under change control.
 *
 *   waivers:
 *     - id: W-2026-014
 *       check: at-rest.data-volume-encrypted
 *       scope: cluster:main        # optional; "*" or absent = every scope of the check
 *       reason: host disks are encrypted by the SAN, attested in audit ticket 4711
 *       approver: jane.doe@example.com
 *       expires: 2027-03-31
 *
 * A waiver changes no measurement: the report keeps the measured status and shows the waiver next
 * to it, and only the exit code and the panel's colour ignore a waived result. An expired waiver
 * waives nothing: its check is FAIL, whatever it measured, until someone renews or removes it.
 */
export interface Waiver {
  readonly id: string;
  readonly check: string;
  readonly scope: string;
  readonly reason: string;
  readonly approver: string;
  /** ISO date (end of that day, UTC) or date-time. */
  readonly expires: string;
}

export interface WaiverUse {
  readonly waiver: Waiver;
  readonly check: string;
  readonly scope: string;
  readonly measured: CheckResult['status'];
  readonly expired: boolean;
}

export async function loadWaivers(file: string): Promise<Waiver[]> {
  const [{parseDocument, LineCounter}, {z}] = await Promise.all([import('yaml'), import('zod')]);
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read the waivers file ${file}: ${err.code ?? err.message}`, {nextSteps: ['Pass the path of an existing YAML file with --waivers.']});
  });
  const lines = new LineCounter();
  const doc = parseDocument(text, {lineCounter: lines, uniqueKeys: true, strict: true, prettyErrors: false});
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const at = lines.linePos(e.pos[0]);
    throw new UsageError(`${file}:${at.line}:${at.col}: not valid YAML: ${e.message.split('\n')[0]}`, {nextSteps: [`Fix ${file} (format: docs/operations.md, "Posture waivers"), then re-run.`]});
  }
  const day = /^\d{4}-\d{2}-\d{2}$/;
  const waiver = z.strictObject({
    id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'an id of letters, digits, ".", "_" or "-"'),
    check: z.string().regex(/^[a-z][a-z0-9-]*(\.[a-z0-9-]+)+$/, 'a check id such as at-rest.data-volume-encrypted'),
    scope: z.string().min(1).default('*'),
    reason: z.string().trim().min(10, 'say why, in at least 10 characters'),
    approver: z.string().trim().min(3, 'name who approved it'),
    // YAML reads an unquoted 2027-03-31 as a date; accept both that and a string.
    expires: z.union([z.date().transform((d) => d.toISOString()), z.string().refine((s) => day.test(s) || !Number.isNaN(Date.parse(s)), 'a date such as 2027-03-31')]),
  });
  const parsed = z.strictObject({waivers: z.array(waiver).default([])}).safeParse(doc.toJS() ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UsageError(`${file}: ${issue.path.join('.') || '(top level)'}: ${issue.message}`, {
      nextSteps: [`Each waiver needs id, check, reason, approver and expires (scope is optional): fix ${file}, then re-run.`],
    });
  }
  const ids = new Set<string>();
  for (const w of parsed.data.waivers) {
    if (ids.has(w.id)) throw new UsageError(`${file}: waiver id ${w.id} is used twice`, {nextSteps: ['Give each waiver its own id: the ops log refers to waivers by id.']});
    ids.add(w.id);
  }
  return parsed.data.waivers.map((w) => ({...w, expires: day.test(w.expires) ? `${w.expires}T23:59:59.999Z` : new Date(w.expires).toISOString()}));
}

/** Waivers whose check id names no check this dforge knows: a typo would otherwise waive nothing, silently. */
export function unknownWaiverChecks(waivers: readonly Waiver[], knownChecks: ReadonlySet<string>): Waiver[] {
  return waivers.filter((w) => !knownChecks.has(w.check));
}

/**
 * Applies waivers to results. A waiver covers a result when the check matches and its scope is
 * "*" or equal. Only WARN, FAIL and MANUAL results use a waiver (one on a passing check is unused,
 * and says so in the report). An expired one turns the result into FAIL.
 */
export function applyWaivers(results: readonly CheckResult[], waivers: readonly Waiver[], now: Date): {results: CheckResult[]; used: WaiverUse[]} {
  const used: WaiverUse[] = [];
  const out = results.map((r) => {
    // "Could not measure" is never accepted in advance: a waiver written for a known FAIL must not
    // also cover the day the cluster is down.
    if (r.status === 'PASS' || r.status === 'SKIP' || r.status === 'ERROR') return r;
    const w = waivers.find((x) => x.check === r.id && (x.scope === '*' || x.scope === r.scope));
    if (!w) return r;
    const expired = Date.parse(w.expires) < now.getTime();
    const applied: AppliedWaiver = {id: w.id, reason: w.reason, approver: w.approver, expires: w.expires, expired};
    used.push({waiver: w, check: r.id, scope: r.scope, measured: r.status, expired});
    if (!expired) return {...r, waiver: applied};
    return {...r, status: 'FAIL' as const, measuredStatus: r.status, waiver: applied, reason: `waiver ${w.id} expired on ${w.expires}${r.reason ? `; measured: ${r.reason}` : ''}`};
  });
  return {results: out, used};
}
