import fc from 'fast-check';
import {describe, expect, it} from 'vitest';

import {ConfigError, parseConfig} from '../../src/config/parse.js';
import {configJsonSchema} from '../../src/config/schema.js';

const valid = `version: 1
domain: dforge.example.com
target: compose
primaryRegion: eu
regions:
  eu:
    jurisdiction: EU
    clusters:
      - name: eu-1
        kind: bundled
    backup:
      destinations:
        - name: eu-local
          kind: local
          path: /var/backups/dforge/eu
  us:
    jurisdiction: US
    clusters:
      - name: us-1
        kind: external
        host: pg.us.example.com
        admin: {secret: postgres/us-1-admin}
images:
  app: registry.example.com/dforge/app:1.4.2
`;

function issuesOf(text: string): ConfigError['issues'] {
  try {
    parseConfig(text, 'dforge.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  throw new Error('expected the config to be rejected');
}

describe('parseConfig', () => {
  it('accepts a multi-region config and fills defaults', () => {
    const config = parseConfig(valid, 'dforge.yaml');
    expect(config.target).toBe('compose');
    expect(Object.keys(config.regions)).toEqual(['eu', 'us']);
    const us = config.regions.us!.clusters[0]!;
    expect(us.kind === 'external' && us.port).toBe(5432);
    expect(config.tls).toEqual({mode: 'internal-ca', extraSans: []});
  });

  it('locates broken YAML by line and column and suggests a fix', () => {
    const issues = issuesOf('version: 1\ndomain: [unclosed\ntarget: compose\n');
    // The parser notices the unclosed "[" where the next line starts.
    expect(issues[0]).toMatchObject({path: '', line: 3, column: 1});
    expect(issues[0]!.message).toMatch(/\]/);
    expect(issues[0]!.fix).toMatch(/indentation|syntax|quot/);
  });

  it('reports an unknown key at its own line with a did-you-mean', () => {
    const issues = issuesOf(valid.replace('primaryRegion: eu', 'primaryRegion: eu\ndomian: x.example.com'));
    expect(issues).toEqual([expect.objectContaining({path: 'domian', line: 5, column: 1, message: 'unknown key "domian"', fix: expect.stringContaining('"domain"')})]);
  });

  it('reports a wrong type inside a list with the path, the line and the fix', () => {
    const issues = issuesOf(valid.replace('host: pg.us.example.com', 'host: pg.us.example.com\n        port: "5432"'));
    expect(issues).toEqual([expect.objectContaining({path: 'regions.us.clusters[0].port', line: 22, column: 15, fix: 'use a number here, without quotes'})]);
  });

  it('lists every problem, not only the first, in file order', () => {
    const issues = issuesOf(valid.replace('target: compose', 'target: swarm').replace('kind: bundled', 'kind: bundled\n        sslmode: require'));
    expect(issues.map((i) => i.path)).toEqual(['target', 'regions.eu.clusters[0].sslmode']);
    expect(issues[0]!.fix).toBe('use one of: "embedded", "compose", "k8s"');
  });

  it('needs a jurisdiction for every region once there are two, and destination names unique across regions', () => {
    const duplicated = valid
      .replace('    jurisdiction: US\n', '')
      .replace('          path: /var/backups/dforge/eu\n', '          path: /var/backups/dforge/eu\n        - name: eu-local\n          kind: local\n          path: /srv/other\n');
    const issues = issuesOf(duplicated);
    expect(issues.map((i) => i.path).sort()).toEqual(['regions.eu.backup.destinations[1].name', 'regions.us.jurisdiction']);
    expect(issues.find((i) => i.path === 'regions.us.jurisdiction')!.message).toContain('region us needs a jurisdiction (e.g. EU, US) once more than one region is declared');
    // One region needs no label: there is nowhere else for data to go.
    const single = valid.slice(0, valid.indexOf('  us:\n')) + valid.slice(valid.indexOf('images:'));
    expect(Object.keys(parseConfig(single.replace('    jurisdiction: EU\n', ''), 'dforge.yaml').regions)).toEqual(['eu']);
  });

  it('names a missing required key', () => {
    const issues = issuesOf(valid.replace('domain: dforge.example.com\n', ''));
    expect(issues).toEqual([expect.objectContaining({path: 'domain', fix: expect.stringContaining('add the required key "domain"')})]);
  });

  it('refuses duplicate keys rather than silently keeping the last one', () => {
    const issues = issuesOf(valid.replace('target: compose', 'target: compose\ntarget: k8s'));
    expect(issues[0]!.fix).toMatch(/duplicated key/);
  });

  it('checks cross-field rules: the primary region exists, cluster names are unique', () => {
    const issues = issuesOf(valid.replace('primaryRegion: eu', 'primaryRegion: ap').replace('name: us-1', 'name: eu-1'));
    expect(issues.map((i) => i.path)).toEqual(['primaryRegion', 'regions.us.clusters[0].name']);
  });

  it('refuses a bundled cluster on the embedded target', () => {
    const issues = issuesOf(valid.replace('target: compose', 'target: embedded'));
    expect(issues[0]).toMatchObject({path: 'regions.eu.clusters[0].kind'});
  });

  it('holds no place for secrets: an inline password is an unknown key', () => {
    const issues = issuesOf(valid.replace('admin: {secret: postgres/us-1-admin}', 'admin: {secret: postgres/us-1-admin, password: hunter2}'));
    expect(issues[0]).toMatchObject({path: 'regions.us.clusters[0].admin.password', message: 'unknown key "password"'});
  });

  it('never throws anything but a ConfigError, whatever the input', () => {
    fc.assert(
      fc.property(fc.string({maxLength: 300}), (text) => {
        try {
          parseConfig(text, 'x.yaml');
        } catch (err) {
          expect(err).toBeInstanceOf(ConfigError);
          for (const issue of (err as ConfigError).issues) {
            expect(issue.line).toBeGreaterThanOrEqual(1);
            expect(issue.fix.length).toBeGreaterThan(0);
          }
        }
      }),
      {numRuns: 300},
    );
  });
});

describe('configJsonSchema', () => {
  it('is a JSON Schema that forbids unknown top-level keys and lists the targets', () => {
    const schema = configJsonSchema() as {$schema: string; additionalProperties: boolean; properties: Record<string, {enum?: string[]}>; required: string[]};
    expect(schema.$schema).toMatch(/json-schema/);
    expect(schema.additionalProperties).toBe(false);
    expect(schema.properties.target!.enum).toEqual(['embedded', 'compose', 'k8s']);
    expect(schema.required).toEqual(expect.arrayContaining(['version', 'domain', 'target', 'regions']));
  });
});
