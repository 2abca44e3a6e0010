import {promises as fs} from 'node:fs';
import path from 'node:path';

/**
 * Lays out a Secret volume as the kubelet projects it: the files, at the volume's defaultMode, in
 * a timestamped directory, a `..data` link to that directory, and one link per key through
 * `..data`. The mount point itself is 0755, as in a pod.
 */
export async function projectSecretVolume(mountDir: string, files: ReadonlyMap<string, Buffer>, defaultMode: number): Promise<void> {
  const projected = path.join(mountDir, '..2026_11_28_00_00_00.000000001');
  await fs.mkdir(projected, {recursive: true, mode: 0o755});
  await fs.chmod(mountDir, 0o755);
  await fs.symlink(path.basename(projected), path.join(mountDir, '..data'));
  for (const [name, content] of files) {
    await fs.writeFile(path.join(projected, name), content);
    await fs.chmod(path.join(projected, name), defaultMode);
    await fs.symlink(path.join('..data', name), path.join(mountDir, name));
  }
}
