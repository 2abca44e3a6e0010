/**
 * What a posture check is, and the one way a probe turns a measurement into a result.
 *
 * A check is a static definition (id, control mapping, severity, what is expected, how it is
 * measured, the fix) plus, per scope it applies to (a tenant, a cluster, the install), a finding
 * measured live. A probe that throws gives ERROR, never PASS: "could not look" is not "fine".
 */
export const POSTURE_STATUSES = ['PASS', 'WARN', 'FAIL', 'SKIP', 'ERROR', 'MANUAL'] as const;
export type PostureStatus = (typeof POSTURE_STATUSES)[number];

/** Weights of the score: a critical check counts ten times a low one. */
export const SEVERITY_WEIGHT = {critical: 10, high: 5, medium: 3, low: 1} as const;
export type Severity = keyof typeof SEVERITY_WEIGHT;

/** The lines of the product page's panel (and the areas behind them). */
export const PANEL_AREAS = ['isolation', 'at-rest', 'in-transit', 'audit', 'self-host', 'residency', 'backups', 'keys', 'runtime'] as const;
export type PanelArea = (typeof PANEL_AREAS)[number];

export interface CheckDefinition {
  /** Stable, dotted: `<area>.<what>`; waivers and history refer to it. */
  readonly id: string;
  readonly title: string;
  readonly area: PanelArea;
  /** CIS PostgreSQL / docker-bench numbers where they exist, GDPR articles for encryption and residency. */
  readonly controls: readonly string[];
  readonly severity: Severity;
  readonly expected: string;
  /** How the observation is made, live: "handshake with a TLS 1.2-only ClientHello after SSLRequest". */
  readonly method: string;
  /** A `dforge …` command or a docs link. */
  readonly fix: string;
}

/** What a probe measured for one scope. ERROR is not a finding: a probe that could not measure throws. */
export interface Finding {
  readonly status: Exclude<PostureStatus, 'ERROR'>;
  readonly observed: string;
  /** Why SKIP or MANUAL, or what a WARN/FAIL means in words. */
  readonly reason?: string;
}

export interface AppliedWaiver {
  readonly id: string;
  readonly reason: string;
  readonly approver: string;
  readonly expires: string;
  /** An expired waiver no longer waives: the check is FAIL. */
  readonly expired: boolean;
}

export interface CheckResult extends CheckDefinition {
  /** `install`, `cluster:<name>`, `tenant:<slug>`, `proxy`, `service:<name>`… */
  readonly scope: string;
  readonly status: PostureStatus;
  readonly observed: string;
  readonly reason?: string;
  /** The status the probe measured, when a waiver changed it. */
  readonly measuredStatus?: PostureStatus;
  readonly waiver?: AppliedWaiver;
}

/** A result an operator has accepted for now: waived, and the waiver still valid. */
export const isWaived = (r: CheckResult): boolean => r.waiver !== undefined && !r.waiver.expired;

/** How bad a status is: FAIL above ERROR (measured bad beats unmeasured), PASS above SKIP (something applied). */
const STATUS_RANK: Readonly<Record<PostureStatus, number>> = {SKIP: 0, PASS: 1, MANUAL: 1, WARN: 2, ERROR: 3, FAIL: 4};

/** The worst status among results that are not waived; SKIP when none applies. */
export function worstStatus(results: readonly CheckResult[]): PostureStatus {
  return results.filter((r) => !isWaived(r)).reduce<PostureStatus>((worst, r) => (STATUS_RANK[r.status] > STATUS_RANK[worst] ? r.status : worst), 'SKIP');
}

export const pass = (observed: string): Finding => ({status: 'PASS', observed});
export const warn = (observed: string, reason?: string): Finding => ({status: 'WARN', observed, reason});
export const fail = (observed: string, reason?: string): Finding => ({status: 'FAIL', observed, reason});
export const skip = (reason: string, observed = 'not applicable'): Finding => ({status: 'SKIP', observed, reason});
export const manual = (reason: string, observed = 'needs attestation'): Finding => ({status: 'MANUAL', observed, reason});

/** A check's result for one scope; whatever the probe throws becomes ERROR with its message. */
export async function runCheck(def: CheckDefinition, scope: string, probe: () => Promise<Finding>): Promise<CheckResult> {
  try {
    const finding = await probe();
    return {...def, scope, ...finding};
  } catch (err) {
    return errorResult(def, scope, err);
  }
}

/** The same check, ERROR, for a scope the probe could not reach at all (a stopped cluster). */
export function errorResult(def: CheckDefinition, scope: string, err: unknown): CheckResult {
  const message = err instanceof Error ? err.message : String(err);
  return {...def, scope, status: 'ERROR', observed: 'not evaluated', reason: message};
}

/** Declares a check; the object is its own definition (typed, so a typo in `area` does not compile). */
export const defineCheck = (def: CheckDefinition): CheckDefinition => def;
