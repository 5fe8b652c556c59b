/** pnpm privacy:set: writes the privacy guard's labelled set (scripts/lib/privacy-set.ts) as JSON lines. */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { labelledPrivacySet } from './lib/privacy-set.js';

const file = path.join(import.meta.dirname, '..', 'test', 'privacy', 'labelled-set.jsonl');
const items = labelledPrivacySet();
writeFileSync(file, items.map((item) => JSON.stringify(item)).join('\n') + '\n');
const withData = items.filter((i) => i.spans.length > 0).length;
console.log(
  `wrote ${file}: ${items.length} prompts, ${withData} with personal data, ${items.length - withData} without`,
);
