import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {parseAllDocuments} from 'yaml';

/**
 * Kubernetes objects as tests see them: parsed from rendered YAML or `kubectl kustomize` output,
 * then checked against the Kubernetes schemas offline (DESIGN §8: no cluster runs here).
 */
export interface K8sObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>};
  readonly [field: string]: unknown;
}

export function parseManifests(text: string): K8sObject[] {
  const docs = parseAllDocuments(text);
  if (!Array.isArray(docs)) return [];
  return docs.flatMap((doc) => {
    if (doc.errors.length > 0) throw new Error(`YAML does not parse: ${doc.errors[0]!.message}`);
    const value = doc.toJS() as K8sObject | null;
    return value === null ? [] : [value];
  });
}

export const objectId = (o: K8sObject): string => `${o.kind}/${o.metadata.name}`;

/** The module of an object's model: kubernetes-models/<group>/<version>/<Kind> ("v1" for the core group). */
const modelModule = (o: K8sObject): string => `kubernetes-models/${o.apiVersion}/${o.kind}`;

/**
 * Schema problems of each object, by kubernetes-models (the OpenAPI schemas of the Kubernetes API):
 * types, formats (quantities, int-or-string) and required fields. An apiVersion/kind it has no
 * model for is a problem too: the cluster would not know it either.
 */
export async function schemaProblems(objects: readonly K8sObject[]): Promise<string[]> {
  const problems: string[] = [];
  for (const o of objects) {
    let Model: new (data: unknown) => {validate(): void};
    try {
      Model = (await import(modelModule(o)))[o.kind];
    } catch {
      problems.push(`${objectId(o)}: no Kubernetes schema for ${o.apiVersion} ${o.kind}`);
      continue;
    }
    try {
      new Model(o).validate();
    } catch (err) {
      problems.push(`${objectId(o)}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/**
 * Fields the Kubernetes API does not know. The OpenAPI schemas allow unknown fields (the API server
 * drops them, and the kubectl 1.20 client refuses them), so a misspelt readOnlyRootFilesystem would
 * pass schemaProblems. TypeScript's excess-property check on kubernetes-models' interfaces finds
 * them: every object becomes a typed object literal in one in-memory program.
 */
export async function unknownFieldProblems(objects: readonly K8sObject[]): Promise<string[]> {
  const {default: ts} = await import('typescript');
  const root = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
  const file = path.join(root, 'test', '__k8s_unknown_fields__.ts');
  const source = objects
    .map((o, i) => `import type {I${o.kind} as T${i}} from '${modelModule(o)}';\nexport const o${i}: T${i} = ${JSON.stringify(o)};\n`)
    .join('');
  const options: import('typescript').CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  };
  const host = ts.createCompilerHost(options);
  const readSource = host.getSourceFile.bind(host);
  const exists = host.fileExists.bind(host);
  host.getSourceFile = (name, language, ...rest) => (name === file ? ts.createSourceFile(name, source, language) : readSource(name, language, ...rest));
  host.fileExists = (name) => name === file || exists(name);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    // Each object is two lines: the import, then the literal.
    const owner = line >= 0 ? objects[Math.floor(line / 2)] : undefined;
    return `${owner ? objectId(owner) : '?'}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
  });
}

export interface PodTemplate {
  readonly owner: string;
  readonly metadata: {labels?: Record<string, string>; annotations?: Record<string, string>};
  readonly spec: Record<string, unknown> & {containers: Container[]; initContainers?: Container[]; volumes?: Volume[]};
}

export interface Container {
  readonly name: string;
  readonly image: string;
  readonly [field: string]: unknown;
}

export interface Volume {
  readonly name: string;
  readonly [field: string]: unknown;
}

/** Every pod template: Deployments, StatefulSets, Jobs and the job template of CronJobs. */
export function podTemplates(objects: readonly K8sObject[]): PodTemplate[] {
  const templates: PodTemplate[] = [];
  for (const o of objects) {
    const spec = o.spec as Record<string, any> | undefined;
    const template =
      o.kind === 'Deployment' || o.kind === 'StatefulSet' || o.kind === 'Job' || o.kind === 'DaemonSet' || o.kind === 'ReplicaSet'
        ? spec?.template
        : o.kind === 'CronJob'
          ? spec?.jobTemplate?.spec?.template
          : o.kind === 'Pod'
            ? {metadata: o.metadata, spec}
            : undefined;
    if (template) templates.push({owner: objectId(o), ...template});
  }
  return templates;
}
