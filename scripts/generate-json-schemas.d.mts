// Types for the test that imports the generator (test/unit/json-schemas.test.ts).
export declare const repoRoot: string;
export declare const schemaDir: string;
export declare const GENERATED_SUFFIX: string;
export declare function schemaFileFor(commandId: string): string;
export declare function generateSchemas(): Promise<Map<string, string>>;
export declare function staleSchemas(generated: Map<string, string>): Promise<string[]>;
