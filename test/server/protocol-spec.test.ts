/**
 * The protocol's specification against the code: the AsyncAPI document generated from the message
 * schemas is the committed docs/asyncapi.json (a schema changed without its specification fails here),
 * it validates with the AsyncAPI parser, the server serves it, and every error code the server's sources
 * raise is in the catalogue that docs/protocol.md lists in full.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { type Diagnostic, DiagnosticSeverity, Parser } from '@asyncapi/parser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES, MESSAGE_SCHEMAS, PROTOCOL_VERSION, asyncApiDocument } from '@floe/shared';
import { type TestServer, startTestServer } from './helpers.js';

const ROOT = path.join(import.meta.dirname, '..', '..');
const committed = JSON.parse(readFileSync(path.join(ROOT, 'docs', 'asyncapi.json'), 'utf8')) as Record<string, unknown>;
const protocolDoc = readFileSync(path.join(ROOT, 'docs', 'protocol.md'), 'utf8');

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const file = path.join(dir, name);
    return statSync(file).isDirectory() ? sources(file) : file.endsWith('.ts') ? [file] : [];
  });
}

/** Every `$ref` in a JSON value. */
function refs(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(refs);
  if (typeof value !== 'object' || value === null) return [];
  return Object.entries(value).flatMap(([key, v]) => (key === '$ref' && typeof v === 'string' ? [v] : refs(v)));
}

/** Errors only: a valid 3.0 document still gets a notice that 3.1 exists. */
const errorsOf = (diagnostics: Diagnostic[]) =>
  diagnostics.filter((d) => (d.severity as number) === (DiagnosticSeverity.Error as number));

describe('the protocol specification', { timeout: 60_000 }, () => {
  let test: TestServer;
  beforeAll(async () => {
    test = await startTestServer();
  });
  afterAll(async () => {
    await test.close();
  });

  it('is generated from the message schemas, and the committed copy is up to date (pnpm protocol:spec)', () => {
    const generated = asyncApiDocument();
    expect(generated).toEqual(committed);
    const schemas = (generated['components'] as { schemas: Record<string, unknown> }).schemas;
    expect(Object.keys(schemas)).toHaveLength(Object.keys(MESSAGE_SCHEMAS).length);
    expect((generated['info'] as { version: string }).version).toBe(String(PROTOCOL_VERSION));
  });

  it('validates as AsyncAPI 3.0, with local references only', async () => {
    const document = asyncApiDocument();
    // a remote $ref would be fetched by the parser; the document has none
    for (const ref of refs(document)) expect(ref.startsWith('#/')).toBe(true);
    const diagnostics = await new Parser().validate(JSON.stringify(document));
    const errors = errorsOf(diagnostics);
    expect(errors.map((e) => `${e.code}: ${e.message} @ ${e.path.join('/')}`)).toEqual([]);
    // and a broken document does not
    const broken = structuredClone(document) as { operations: Record<string, { action: string }> };
    Object.values(broken.operations)[0]!.action = 'publish';
    const brokenErrors = errorsOf(await new Parser().validate(JSON.stringify(broken)));
    expect(brokenErrors.length).toBeGreaterThan(0);
  });

  it('is served beside /docs', async () => {
    const response = await fetch(`${test.url}/docs/asyncapi.json`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual(asyncApiDocument());
  });

  it("lists every error code the server's sources raise, each in docs/protocol.md", () => {
    const raised = new Set<string>();
    const patterns = [
      /(?:refuse|ProtocolError|CodecError|HttpError|FloeError|JobError|FederationError)\(\s*(?:\w+,\s*)*(?:\d+,\s*)?'([a-z][a-z0-9_]+)'/g,
      /code: '([a-z][a-z0-9_]+)'/g,
    ];
    for (const dir of ['packages/server/src', 'packages/shared/src', 'packages/federation/src']) {
      for (const file of sources(path.join(ROOT, dir))) {
        const text = readFileSync(file, 'utf8');
        for (const pattern of patterns) for (const m of text.matchAll(pattern)) raised.add(m[1]!);
      }
    }
    expect(raised.size).toBeGreaterThan(30);
    const catalogue = new Set(Object.keys(ERROR_CODES));
    expect([...raised].filter((code) => !catalogue.has(code))).toEqual([]);
    expect([...catalogue].filter((code) => !protocolDoc.includes(`\`${code}\``))).toEqual([]);
  });
});
