import {UserError} from '../errors.js';

export const SLUG_PATTERN = /^[a-z][a-z0-9-]{1,39}$/;

/**
 * Names a tenant may not take: they would collide with PostgreSQL's own roles and databases,
 * dforge's control plane, or read as something they are not in logs and URLs.
 */
export const RESERVED_SLUGS: ReadonlySet<string> = new Set([
  'admin', 'administrator', 'root', 'postgres', 'template0', 'template1', 'public', 'pg', 'sys', 'system',
  'dforge', 'control', 'provisioner', 'auth', 'app', 'api', 'www', 'proxy', 'default', 'internal', 'superuser',
  'replication', 'backup', 'restore', 'audit', 'test', 'null', 'none',
]);

/** Checks a tenant slug; the error names the rule that failed and what a valid slug looks like. */
export function validateSlug(slug: string): string {
  const fix = 'Use 2-40 characters: a lowercase letter first, then lowercase letters, digits or "-" (e.g. acme, acme-eu-2).';
  if (slug.length === 0) throw new UserError('the tenant slug is empty', {nextSteps: [fix]});
  if (slug.length > 40) throw new UserError(`the tenant slug is ${slug.length} characters long; at most 40 are allowed`, {nextSteps: [fix]});
  if (!SLUG_PATTERN.test(slug) || slug.endsWith('-') || slug.includes('--')) {
    throw new UserError(`the tenant slug ${JSON.stringify(slug)} is not valid`, {nextSteps: [fix, 'A slug ends with a letter or digit and has no "--".']});
  }
  if (RESERVED_SLUGS.has(slug) || slug.startsWith('pg-')) {
    throw new UserError(`the tenant slug "${slug}" is reserved`, {nextSteps: ['Choose another name; reserved names collide with PostgreSQL or dforge objects.']});
  }
  return slug;
}

/** The role and database of a tenant: the same name, which the pg_hba `sameuser` rule relies on. */
export function tenantDbName(slug: string): string {
  return `tenant_${slug.replaceAll('-', '_')}`;
}
