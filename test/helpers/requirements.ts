/**
 * Real-component tests need PostgreSQL binaries and a Docker engine. On a developer machine
 * without them the suites are skipped with a visible reason; with CI=true a missing component
 * fails the run instead, because a silently skipped suite is a green lie.
 */
export const inCI = process.env.CI === 'true';

export function missingComponent(component: string, reason: string): never | false {
  if (inCI) throw new Error(`${component} is required when CI=true but is unavailable: ${reason}`);
  process.stderr.write(`[skip] ${component} unavailable: ${reason}\n`);
  return false;
}
