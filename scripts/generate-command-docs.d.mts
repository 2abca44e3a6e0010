/** The text of docs/commands.md for the built tree at `root` (default: this repository). */
export function renderCommandDocs(root?: string): string;
