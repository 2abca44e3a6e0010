/** One field of a libpq password file line: `:` and `\` are escaped with `\`. */
export const pgpassField = (v: string): string => v.replaceAll('\\', '\\\\').replaceAll(':', '\\:');
