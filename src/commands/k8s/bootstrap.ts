import {BaseCommand} from '../../base-command.js';
import {bootstrapKubernetes, describeBootstrap, type KubernetesBootstrapResult} from '../../k8s/bootstrap.js';

export default class K8sBootstrap extends BaseCommand<typeof K8sBootstrap> {
  static override summary = 'Bootstrap the databases of a Kubernetes install from inside its namespace (idempotent).';
  static override description =
    'What the Job dforge-bootstrap runs, which `install --target k8s` applies and waits for: the provisioner role, the tenant template and dforge_control on the bundled postgres, the auth role and database on auth-db. It reads every credential from the install directory (--dir: the unpacked Secret dforge-bootstrap-install and the mounted master key) and creates none; it reaches the databases by their Service names, so it works only inside the namespace.';
  static override examples = ['<%= config.bin %> k8s bootstrap --dir /var/lib/dforge'];

  async run(): Promise<KubernetesBootstrapResult> {
    const result = await bootstrapKubernetes(this.installDir());
    this.out.progress(`bootstrapped: ${describeBootstrap(result)}`);
    return result;
  }
}
