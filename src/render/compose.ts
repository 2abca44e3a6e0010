import type {DforgeConfig} from '../config/schema.js';
import {composeLimits} from './compose-limits.js';
import {byCodePoint, hashFiles, type RenderedFile} from './rendered-file.js';
import {readTemplate} from './sources.js';
import {assertFilled, renderTextTemplate, renderYamlTemplate} from './template.js';
import {PROXY_UID, templateValues, type ImageService} from './values.js';

/** The compose services whose configuration dforge renders, and the files each one mounts. */
const SERVICE_FILES: Record<string, Array<{template: string; out: string; values?: Record<string, unknown>}>> = {
  postgres: [
    {template: 'postgres/postgresql.conf', out: 'postgres/postgresql.conf'},
    {template: 'postgres/pg_hba.conf', out: 'postgres/pg_hba.conf'},
  ],
  authDb: [
    // The same server settings as postgres, under its own cluster name; its own pg_hba.
    {template: 'postgres/postgresql.conf', out: 'auth-db/postgresql.conf', values: {cluster: 'auth-db'}},
    {template: 'auth-db/pg_hba.conf', out: 'auth-db/pg_hba.conf'},
  ],
  auth: [],
  app: [],
  proxy: [{template: 'proxy/nginx.conf', out: 'proxy/nginx.conf'}],
};

export const COMPOSE_FILE = 'compose.yaml';

/**
 * Renders the compose stack: each service's configuration files, then compose.yaml, whose
 * per-service config-hash labels make `docker compose up -d` recreate exactly the services whose
 * rendered configuration changed. With `pinned` (install, which reads the engine), each image goes
 * by its digest or image id; without it (dforge render, no engine asked), by its tag.
 */
export async function renderCompose(config: DforgeConfig, overridesDir: string | undefined, pinned?: Record<ImageService, string>): Promise<RenderedFile[]> {
  const base = templateValues(config);
  const limits = composeLimits(config);
  // Template names are dotted paths of identifiers: auth-db's limits go under authDb, as its image does.
  const values: Record<string, unknown> = {
    ...base,
    // Install knows each image's immutable reference from the engine; the tag stays on the dev.dforge.image label.
    images: pinned ?? base.images,
    imageTags: base.images,
    uids: {...(base.uids as object), proxy: `${PROXY_UID}:${PROXY_UID}`},
    ids: {proxy: PROXY_UID},
    limits: {postgres: limits.postgres, authDb: limits['auth-db'], auth: limits.auth, app: limits.app, proxy: limits.proxy},
  };
  const files: RenderedFile[] = [];
  const hashes: Record<string, string> = {};
  for (const [service, specs] of Object.entries(SERVICE_FILES)) {
    const own: RenderedFile[] = [];
    for (const spec of specs) {
      const source = await readTemplate('compose', spec.template, overridesDir);
      const serviceValues = spec.values ? {...values, postgres: {...(values.postgres as object), ...spec.values}} : values;
      const content = renderTextTemplate(source.origin, source.text, serviceValues);
      assertFilled(source.origin, content);
      own.push({path: spec.out, content});
    }
    files.push(...own);
    hashes[service] = hashFiles(own);
  }
  const compose = await readTemplate('compose', COMPOSE_FILE, overridesDir);
  const content = renderYamlTemplate(compose.origin, compose.text, {...values, hashes});
  assertFilled(compose.origin, content);
  files.push({path: COMPOSE_FILE, content});
  return files.sort((a, b) => byCodePoint(a.path, b.path));
}
