/**
 * Before a purge: on a terminal, offers to export the master key and asks where to. Off a terminal
 * it asks nothing (the operator passes --export-master-key instead) and returns undefined.
 */
export async function offerMasterKeyExport(): Promise<string | undefined> {
  if (!process.stdin.isTTY || !process.stderr.isTTY) return undefined;
  const inquirer = (await import('inquirer')).default;
  // Prompts go to stderr: stdout carries data only.
  const prompt = inquirer.createPromptModule({output: process.stderr});
  // Short: the backups it concerns were listed just above, and a long prompt wraps on a narrow terminal.
  const message = 'Export the master key to a file first? Path (empty: no)';
  const {file} = await prompt<{file: string}>([{type: 'input', name: 'file', message}]);
  return file.trim() === '' ? undefined : file.trim();
}
