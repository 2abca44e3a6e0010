import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {renderManifests, type RenderResult} from '../render/service.js';

export default class Render extends BaseCommand<typeof Render> {
  static override summary = 'Write the compose or Kubernetes manifests of this install, without applying them.';
  static override description = `Deterministic: the same dforge.yaml and templates give byte-identical files. Templates under <dir>/templates/<target>/ shadow the packaged ones. Secrets are never rendered; install puts them in runtime/.
Files in the output directory that this render does not produce are removed, so it always holds exactly one render.`;
  static override examples = ['<%= config.bin %> render', '<%= config.bin %> render --target k8s --out ./manifests'];

  static override flags = {
    target: Flags.string({summary: 'compose or k8s (default: the target in dforge.yaml).', options: ['compose', 'k8s']}),
    out: Flags.directory({summary: 'Output directory (default: <dir>/rendered/<target>).'}),
  };

  async run(): Promise<RenderResult> {
    const r = await renderManifests(this.installDir(), {target: this.flags.target as 'compose' | 'k8s' | undefined, out: this.flags.out});
    this.out.progress(`${r.target}: ${r.written.length} written, ${r.unchanged.length} unchanged, ${r.removed.length} removed in ${r.out}`);
    return r;
  }
}
