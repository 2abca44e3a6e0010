import {spawn} from 'node:child_process';
const t = performance.now();
const c = spawn('/usr/lib/postgresql/15/bin/pg_dump', ['-Fc'], {stdio: ['ignore', 'pipe', 'inherit']});
let n = 0;
for await (const chunk of c.stdout) n += chunk.length;
console.log('node pipe read', ((performance.now() - t) / 1000).toFixed(2), 's', n);
