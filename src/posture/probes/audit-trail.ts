import type {Client} from 'pg';

import {terminalSafe} from '../../ui/terminal-safe.js';
import {ownerRoleOf} from '../../postgres/provisioner.js';
import {MODULE_SCHEMAS} from '../../tenants/module-sql.js';
import type {Tenant} from '../../tenants/registry.js';
import {defineCheck, fail, pass, runCheck, skip, warn, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import {connectAsTenant, onControl, usingClient, type PostureContext, type Probe} from '../context.js';

/**
 * The audit trail, measured where it lives: inside each tenant database, on the tenant's own
 * session (so nothing the tenant planted runs with more power than it has), with every catalog
 * object named pg_catalog-qualified; the audit.coverage view is the tenant's to read, not ours to
 * trust. And the install's ops log: keyed, anchored, and verifying.
 */

const COVERAGE = defineCheck({
  id: 'audit.change-log-coverage',
  title: 'Every module table carries the change-log triggers',
  area: 'audit',
  controls: ['CIS PostgreSQL 3.2', 'GDPR Art. 5(2)'],
  severity: 'critical',
  expected: `every table (relkind r) in ${MODULE_SCHEMAS.join(', ')} has dforge_change_log (AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW) and dforge_change_log_truncate, enabled, calling audit.log_change()`,
  method: 'pg_catalog.pg_class and pg_trigger on a session as the tenant\'s own login role in its database',
  fix: 'docs/security.md#the-change-log-cant-be-edited-by-the-tenant; as the tenant, SELECT audit.attach_all() attaches what is missing',
});

const GUARD = defineCheck({
  id: 'audit.change-log-guard',
  title: 'The change-log guard event triggers are in place and enabled',
  area: 'audit',
  controls: ['CIS PostgreSQL 3.2', 'GDPR Art. 5(2)'],
  severity: 'high',
  expected: 'event triggers dforge_keep_change_log (ddl_command_end) and dforge_keep_change_log_on_drop (sql_drop), enabled, calling dforge_guard\'s functions',
  method: 'pg_catalog.pg_event_trigger on a session as the tenant\'s own login role in its database',
  fix: 'docs/security.md#the-change-log-cant-be-edited-by-the-tenant; the guard comes from the tenant template, which dforge db init / dforge install refreshes; a database cloned without it needs a restore into a new tenant (dforge restore --as)',
});

const TAMPER = defineCheck({
  id: 'audit.change-log-tamper',
  title: 'The tenant can\'t alter or remove change-log rows',
  area: 'audit',
  controls: ['CIS PostgreSQL 4.6', 'GDPR Art. 5(2)'],
  severity: 'critical',
  expected: 'tenant_<s> has no UPDATE, DELETE or TRUNCATE on audit.change_log, owns neither it, audit.log_change() nor the audit schema (tenant_<s>__owner does), and is not a member of tenant_<s>__owner',
  method: 'has_table_privilege, has_any_column_privilege, pg_has_role and owners from pg_catalog, for the tenant role, on its own session',
  fix: 'docs/security.md#the-change-log-cant-be-edited-by-the-tenant; as the superuser, REVOKE what is named and give the objects back to tenant_<s>__owner',
});

const OPS_LOG = defineCheck({
  id: 'audit.ops-log-chain',
  title: 'The ops log is keyed, anchored and verifies',
  area: 'audit',
  controls: ['GDPR Art. 5(2)', 'GDPR Art. 30'],
  severity: 'high',
  expected: 'every entry\'s MAC and link verify under the ops-log key, and the head matches the anchor in the install directory',
  method: 'OpsLog.verify over dforge_control.ops_log and <install>/state/ops-log-head.json (the same walk as dforge audit verify)',
  fix: 'dforge audit verify names the entry; docs/security.md#the-ops-log-is-evidence',
});

export const AUDIT_TRAIL_CHECKS: readonly CheckDefinition[] = [COVERAGE, GUARD, TAMPER, OPS_LOG];

/** How the coverage observation starts, so the panel line can sum it over tenants. */
const COVERAGE_FORM = /^(\d+)\/(\d+) module tables/;

/** The covered/total tables of an audit.change-log-coverage result, when it was measured. */
export function coverageOf(result: CheckResult): {covered: number; total: number} | undefined {
  // By the observed form, not the status: a waiver may have changed the status, not the measurement.
  if (result.id !== COVERAGE.id) return undefined;
  const m = COVERAGE_FORM.exec(result.observed);
  return m ? {covered: Number(m[1]), total: Number(m[2])} : undefined;
}

const SCHEMAS_SQL = MODULE_SCHEMAS.map((s) => `'${s}'`).join(', ');
// The trigger function by owner-controlled schema and name, no argument; the tenant can't create
// another audit.log_change() (the schema is the owner role's).
const LOG_FN = `SELECT p.oid FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'audit' AND p.proname = 'log_change' AND p.pronargs = 0`;
// What the guard also insists on: the function, enabled (origin or always), no WHEN, no column list, the right events.
const TRIGGER_OK = (name: string, tgtype: number): string => `EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
   WHERE g.tgrelid = c.oid AND g.tgname = '${name}' AND g.tgfoid IN (${LOG_FN}) AND g.tgenabled IN ('O', 'A')
     AND g.tgtype = ${tgtype} AND g.tgqual IS NULL AND g.tgnargs = 0 AND g.tgattr::pg_catalog.text = '')`;

interface TableRow {
  schema: string;
  name: string;
  row_trigger: boolean;
  truncate_trigger: boolean;
}

interface GuardRow {
  evtname: string;
  evtevent: string;
  evtenabled: string;
  fn: string;
}

interface TamperRow {
  table_owner: string | null;
  function_owner: string | null;
  schema_owner: string | null;
  can_update: boolean | null;
  can_delete: boolean | null;
  can_truncate: boolean | null;
  can_update_column: boolean | null;
  can_trigger: boolean | null;
  /** Triggers and rules on the change log itself: dforge puts none there, and one could drop or rewrite every row written. */
  foreign_triggers: string[] | null;
  rules: string[] | null;
  member_of_owner: boolean | null;
}

interface Inside {
  tables: TableRow[];
  guard: GuardRow[];
  tamper: TamperRow;
}

async function measureInside(c: Client, t: Tenant): Promise<Inside> {
  const tables = await c.query<TableRow>(
    `SELECT n.nspname AS schema, c.relname AS name, ${TRIGGER_OK('dforge_change_log', 29)} AS row_trigger, ${TRIGGER_OK('dforge_change_log_truncate', 32)} AS truncate_trigger
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname IN (${SCHEMAS_SQL}) AND c.relkind = 'r'
      ORDER BY 1, 2`,
  );
  const guard = await c.query<GuardRow>(
    `SELECT e.evtname::pg_catalog.text AS evtname, e.evtevent::pg_catalog.text AS evtevent, e.evtenabled::pg_catalog.text AS evtenabled,
            pn.nspname::pg_catalog.text || '.' || p.proname::pg_catalog.text AS fn
       FROM pg_catalog.pg_event_trigger e
       JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
      WHERE e.evtname IN ('dforge_keep_change_log', 'dforge_keep_change_log_on_drop')`,
  );
  // Privileges asked for the tenant role by name: the session's current_user is not trusted.
  const tamper = await c.query<TamperRow>(
    `WITH cl AS (SELECT c.oid, c.relowner FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'audit' AND c.relname = 'change_log' AND c.relkind IN ('r', 'p')),
          fn AS (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid IN (${LOG_FN}))
     SELECT (SELECT pg_catalog.pg_get_userbyid(relowner) FROM cl) AS table_owner,
            (SELECT pg_catalog.pg_get_userbyid(proowner) FROM fn) AS function_owner,
            (SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace WHERE nspname = 'audit') AS schema_owner,
            (SELECT pg_catalog.has_table_privilege($1, oid, 'UPDATE') FROM cl) AS can_update,
            (SELECT pg_catalog.has_table_privilege($1, oid, 'DELETE') FROM cl) AS can_delete,
            (SELECT pg_catalog.has_table_privilege($1, oid, 'TRUNCATE') FROM cl) AS can_truncate,
            (SELECT pg_catalog.has_any_column_privilege($1, oid, 'UPDATE') FROM cl) AS can_update_column,
            (SELECT pg_catalog.has_table_privilege($1, oid, 'TRIGGER') FROM cl) AS can_trigger,
            (SELECT pg_catalog.array_agg(g.tgname::pg_catalog.text) FROM pg_catalog.pg_trigger g, cl WHERE g.tgrelid = cl.oid AND NOT g.tgisinternal) AS foreign_triggers,
            (SELECT pg_catalog.array_agg(w.rulename::pg_catalog.text) FROM pg_catalog.pg_rewrite w, cl WHERE w.ev_class = cl.oid) AS rules,
            (SELECT pg_catalog.pg_has_role($1, r.oid, 'MEMBER') FROM pg_catalog.pg_roles r WHERE r.rolname = $2) AS member_of_owner`,
    [t.role, ownerRoleOf(t.role)],
  );
  return {tables: tables.rows, guard: guard.rows, tamper: tamper.rows[0]!};
}

const LIST_AT_MOST = 10;
const listed = (names: readonly string[]): string => (names.length <= LIST_AT_MOST ? names.join(', ') : `${names.slice(0, LIST_AT_MOST).join(', ')} and ${names.length - LIST_AT_MOST} more`);

export function coverageFinding(tables: readonly TableRow[]): Finding {
  const lacking = tables.filter((r) => !r.row_trigger || !r.truncate_trigger);
  const observed = `${tables.length - lacking.length}/${tables.length} module tables with the change-log triggers`;
  if (lacking.length === 0) return pass(observed);
  // Table names are the tenant's: no control characters reach a report line.
  const name = (r: TableRow): string => `${r.schema}.${terminalSafe(r.name)}${r.row_trigger ? ' (no truncate trigger)' : r.truncate_trigger ? ' (no row trigger)' : ''}`;
  return fail(`${observed}; lacking: ${listed(lacking.map(name))}`, 'changes to these tables are not (all) written to audit.change_log');
}

const GUARD_EXPECTED: Record<string, {event: string; fn: string}> = {
  dforge_keep_change_log: {event: 'ddl_command_end', fn: 'dforge_guard.keep_change_log'},
  dforge_keep_change_log_on_drop: {event: 'sql_drop', fn: 'dforge_guard.keep_change_log_on_drop'},
};

export function guardFinding(rows: readonly GuardRow[]): Finding {
  const problems: string[] = [];
  for (const [name, want] of Object.entries(GUARD_EXPECTED)) {
    const row = rows.find((r) => r.evtname === name);
    if (!row) problems.push(`${name} missing`);
    else if (row.evtenabled !== 'O' && row.evtenabled !== 'A') problems.push(`${name} disabled (${row.evtenabled})`);
    else if (row.evtevent !== want.event || row.fn !== want.fn) problems.push(`${name} is on ${row.evtevent} calling ${row.fn}`);
  }
  return problems.length === 0
    ? pass('dforge_keep_change_log and dforge_keep_change_log_on_drop enabled')
    : fail(problems.join('; '), 'without the guard, the tenant can create unaudited tables and disable or drop change-log triggers');
}

export function tamperFinding(t: Tenant, r: TamperRow): Finding {
  const owner = ownerRoleOf(t.role);
  const problems: string[] = [];
  if (r.table_owner === null) problems.push('audit.change_log does not exist');
  if (r.function_owner === null) problems.push('audit.log_change() does not exist');
  for (const [what, who] of [['audit.change_log', r.table_owner], ['audit.log_change()', r.function_owner], ['schema audit', r.schema_owner]] as const) {
    if (who !== null && who !== owner) problems.push(`${what} owned by ${who}`);
  }
  const privileges = [['UPDATE', r.can_update], ['DELETE', r.can_delete], ['TRUNCATE', r.can_truncate], ['UPDATE on a column', r.can_update_column], ['TRIGGER', r.can_trigger]] as const;
  const held = privileges.filter(([, has]) => has === true).map(([p]) => p);
  if (held.length > 0) problems.push(`${t.role} has ${held.join(', ')} on audit.change_log`);
  if (r.foreign_triggers?.length) problems.push(`audit.change_log carries trigger(s) ${r.foreign_triggers.map(terminalSafe).join(', ')}, which dforge never puts there`);
  if (r.rules?.length) problems.push(`audit.change_log carries rule(s) ${r.rules.map(terminalSafe).join(', ')}`);
  if (r.member_of_owner === true) problems.push(`${t.role} is a member of ${owner}`);
  if (r.member_of_owner === null) problems.push(`${owner} does not exist`);
  return problems.length === 0
    ? pass(`owned by ${owner}, no trigger or rule on it; ${t.role}: no UPDATE, DELETE, TRUNCATE or TRIGGER, not a member of the owner`)
    : fail(problems.join('; '), 'the tenant could rewrite or remove its own audit trail');
}

function tenantResults(ctx: PostureContext, t: Tenant): Promise<CheckResult[]> {
  const scope = `tenant:${t.slug}`;
  const notMeasurable =
    t.status === 'provisioning' || t.status === 'deleting'
      ? skip(`tenant is ${t.status}: finish it with dforge tenant ${t.status === 'provisioning' ? 'create' : 'delete'} ${t.slug}`)
      : t.status === 'suspended'
        ? skip(`tenant ${t.slug} is suspended: its login role can't log in, so its database is not looked into (nor can it change while suspended)`)
        : undefined;
  const inside = notMeasurable ? undefined : ctx.limit(() => usingClient(() => connectAsTenant(ctx, t), (c) => measureInside(c, t)));
  inside?.catch(() => undefined);
  const measured = async (f: (m: Inside) => Finding): Promise<Finding> => notMeasurable ?? f(await inside!);
  return Promise.all([
    runCheck(COVERAGE, scope, () => measured((m) => coverageFinding(m.tables))),
    runCheck(GUARD, scope, () => measured((m) => guardFinding(m.guard))),
    runCheck(TAMPER, scope, () => measured((m) => tamperFinding(t, m.tamper))),
  ]);
}

async function opsLogFinding(ctx: PostureContext): Promise<Finding> {
  const v = await onControl(ctx, (plane) => plane.opsLog.verify(plane.control));
  if (v.keyed === 0) return warn(`${v.entries} entries, none keyed yet`, 'the next operation dforge records starts the keyed chain and anchors it');
  if (!v.intact) {
    const e = v.brokenEntry;
    const entry = e ? `entry ${e.seq} (${e.action} ${e.target} by ${e.actor} at ${e.at})` : `entry ${v.brokenAt}`;
    return fail(`broken at ${entry}`, v.reason);
  }
  const anchored = v.anchor ? `anchored at entry ${v.anchor.seq}` : 'not anchored';
  return pass(`${v.entries} entries (${v.keyed} keyed) verify; ${anchored}${v.unanchored > 0 ? `, ${v.unanchored} past the anchor (an append interrupted before re-anchoring)` : ''}`);
}

export const auditTrailProbe: Probe = async (ctx) => {
  const [opsLog, perTenant] = await Promise.all([runCheck(OPS_LOG, 'install', () => opsLogFinding(ctx)), Promise.all(ctx.tenants.map((t) => tenantResults(ctx, t)))]);
  return [opsLog, ...perTenant.flat()];
};
