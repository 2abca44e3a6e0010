import {isWaived, type CheckResult} from './check.js';
import type {PostureReport} from './service.js';

/**
 * The report as JUnit XML, for CI dashboards: one testsuite per area, one testcase per check and
 * scope. FAIL (and WARN with --fail-on warn) is a <failure>, ERROR an <error>, SKIP and MANUAL are
 * <skipped>; a waived result is a pass whose <system-out> names the waiver.
 */
export function toJunit(report: PostureReport): string {
  const areas = [...new Set(report.checks.map((c) => c.area))];
  const suites = areas.map((area) => {
    const cases = report.checks.filter((c) => c.area === area);
    const failing = (c: CheckResult): boolean => !isWaived(c) && (c.status === 'FAIL' || (report.failOn === 'warn' && c.status === 'WARN'));
    const errors = cases.filter((c) => !isWaived(c) && c.status === 'ERROR').length;
    const skipped = cases.filter((c) => c.status === 'SKIP' || c.status === 'MANUAL').length;
    const body = cases.map((c) => {
      const detail = `${c.status}: observed ${c.observed}; expected ${c.expected}${c.reason ? `; ${c.reason}` : ''}; fix: ${c.fix}`;
      const inner = failing(c)
        ? `<failure message="${attr(`${c.title}: ${c.observed}`)}" type="${c.status}">${text(detail)}</failure>`
        : !isWaived(c) && c.status === 'ERROR'
          ? `<error message="${attr(`${c.title}: could not be evaluated`)}" type="ERROR">${text(detail)}</error>`
          : c.status === 'SKIP' || c.status === 'MANUAL'
            ? `<skipped message="${attr(`${c.status}: ${c.reason ?? c.observed}`)}"/>`
            : `<system-out>${text(isWaived(c) ? `waived by ${c.waiver!.id} (${c.waiver!.approver}, until ${c.waiver!.expires}): ${detail}` : detail)}</system-out>`;
      return `    <testcase classname="dforge.posture.${attr(area)}" name="${attr(`${c.id} [${c.scope}]`)}" time="0">${inner}</testcase>`;
    });
    const failures = cases.filter(failing).length;
    return {failures, errors, skipped, xml: `  <testsuite name="posture.${attr(area)}" tests="${cases.length}" failures="${failures}" errors="${errors}" skipped="${skipped}" timestamp="${attr(report.at)}">\n${body.join('\n')}\n  </testsuite>`};
  });
  const totals = (key: 'failures' | 'errors' | 'skipped'): number => suites.reduce((n, s) => n + s[key], 0);
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="dforge posture ${attr(report.install.domain)}" tests="${report.checks.length}" failures="${totals('failures')}" errors="${totals('errors')}" skipped="${totals('skipped')}" time="${(report.durationMs / 1000).toFixed(3)}">`,
    ...suites.map((s) => s.xml),
    '</testsuites>',
    '',
  ].join('\n');
}

// XML 1.0 forbids most control characters even escaped; observed values can carry them (a tenant's names).
const stripInvalid = (s: string): string => s.replace(/[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu, '\uFFFD');
const text = (s: string): string => stripInvalid(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const attr = (s: string): string => text(s).replace(/"/g, '&quot;').replace(/\n/g, '&#10;');
