/**
 * Import rules for src/, checked by test/unit/import-cycles.test.ts (and `npx depcruise src`).
 * A cycle makes load order decide what is defined when a module runs, and it ties modules
 * together so that none can be read, tested or split alone. Type-only imports count
 * (tsPreCompilationDeps): a type shared both ways belongs in a module of its own.
 */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'An import cycle in src/. Break it: move the helper or the shared type both sides need into a module of its own, or pass the dependency in.',
      from: {path: '^src/'},
      to: {circular: true},
    },
  ],
  options: {
    doNotFollow: {path: 'node_modules'},
    tsConfig: {fileName: 'tsconfig.json'},
    tsPreCompilationDeps: true,
  },
};
