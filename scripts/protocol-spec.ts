/**
 * pnpm protocol:spec: writes docs/asyncapi.json from the protocol's TypeBox schemas, and the error-code
 * table of docs/protocol.md from the catalogue (tests compare both with the code).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { format, resolveConfig } from 'prettier';
import { ERROR_CODES, asyncApiDocument } from '@floe/shared';

const DOCS = path.join(import.meta.dirname, '..', 'docs');

const spec = path.join(DOCS, 'asyncapi.json');
// formatted as the repository's formatter would, so that `prettier --check` passes on what is written
writeFileSync(
  spec,
  await format(JSON.stringify(asyncApiDocument()), { ...(await resolveConfig(spec)), filepath: spec }),
);
console.log(`wrote ${spec}`);

const protocol = path.join(DOCS, 'protocol.md');
const rows = Object.entries(ERROR_CODES).map(
  ([code, info]) => `| \`${code}\` | ${info.channels.join(', ')} | ${info.meaning.replace(/\|/g, '\\|')} |`,
);
const table = ['| Code | Arrives as | Meaning |', '| --- | --- | --- |', ...rows].join('\n');
const text = readFileSync(protocol, 'utf8').replace(
  /<!-- error-codes:start -->[\s\S]*<!-- error-codes:end -->/,
  `<!-- error-codes:start -->\n${table}\n<!-- error-codes:end -->`,
);
writeFileSync(protocol, await format(text, { ...(await resolveConfig(protocol)), filepath: protocol }));
console.log(`wrote the error table of ${protocol} (${rows.length} codes)`);
