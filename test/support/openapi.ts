/**
 * docs/openapi.yaml, loaded, and a checker for the subset of JSON Schema it uses:
 * `type` (one or a list, `integer` and `null` included), `enum`, `properties`,
 * `required`, `additionalProperties` (false or a schema), `items`, `oneOf`,
 * `pattern`, `minimum`, `maximum` and `$ref` to `#/components/...`. A keyword
 * outside that subset throws, so the spec cannot grow a rule the tests silently skip.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { REPO_ROOT } from './daemon.js';

export type Schema = { readonly [keyword: string]: unknown };
type Json = Record<string, unknown>;

export const OPENAPI_PATH = join(REPO_ROOT, 'docs', 'openapi.yaml');

export function loadOpenApi(path = OPENAPI_PATH): Json {
  return parse(readFileSync(path, 'utf8')) as Json;
}

/** Keywords that only describe: ignored by the checker. */
const ANNOTATIONS = new Set(['description', 'format', 'contentMediaType', 'title', 'examples', 'default']);
const CHECKED = new Set([
  '$ref',
  'type',
  'enum',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'oneOf',
  'pattern',
  'minimum',
  'maximum',
]);

/** Follows `$ref: '#/a/b'` inside `root` until it reaches an object without one. */
export function deref<T = Json>(root: Json, node: unknown): T {
  let current = node as Json;
  for (let hops = 0; typeof current?.['$ref'] === 'string'; hops++) {
    if (hops > 20) throw new Error('$ref loop');
    const ref = current['$ref'] as string;
    if (!ref.startsWith('#/')) throw new Error(`only local $refs are supported: ${ref}`);
    let target: unknown = root;
    for (const part of ref.slice(2).split('/')) target = (target as Json | undefined)?.[part];
    if (target === undefined) throw new Error(`unresolved $ref ${ref}`);
    current = target as Json;
  }
  return current as T;
}

function typeOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
    case 'object':
      return typeOf(value) === 'object';
    default:
      return typeOf(value) === type;
  }
}

/** The problems of `value` against `schema` (empty when it conforms), each with its JSON path. */
export function validate(root: Json, schema: Schema, value: unknown, at = '$'): string[] {
  const s = deref<Schema>(root, schema);
  for (const keyword of Object.keys(s)) {
    if (!CHECKED.has(keyword) && !ANNOTATIONS.has(keyword))
      throw new Error(`${at}: schema keyword ${keyword} is not supported by this checker`);
  }
  const problems: string[] = [];
  if (s['type'] !== undefined) {
    const types = Array.isArray(s['type']) ? (s['type'] as string[]) : [s['type'] as string];
    if (!types.some((t) => hasType(value, t))) {
      return [`${at}: expected ${types.join(' or ')}, got ${typeOf(value)}`];
    }
  }
  if (s['enum'] !== undefined && !(s['enum'] as unknown[]).includes(value))
    problems.push(`${at}: ${JSON.stringify(value)} is not one of ${JSON.stringify(s['enum'])}`);
  if (typeof value === 'string' && typeof s['pattern'] === 'string' && !new RegExp(s['pattern']).test(value))
    problems.push(`${at}: ${JSON.stringify(value)} does not match ${s['pattern']}`);
  if (typeof value === 'number') {
    if (typeof s['minimum'] === 'number' && value < s['minimum'])
      problems.push(`${at}: ${value} < ${s['minimum']}`);
    if (typeof s['maximum'] === 'number' && value > s['maximum'])
      problems.push(`${at}: ${value} > ${s['maximum']}`);
  }
  if (s['oneOf'] !== undefined) {
    const branches = s['oneOf'] as Schema[];
    const matching = branches.filter((b) => validate(root, b, value, at).length === 0).length;
    if (matching !== 1) problems.push(`${at}: matches ${matching} of the ${branches.length} oneOf branches`);
  }
  if (typeOf(value) === 'object') {
    const object = value as Json;
    for (const name of (s['required'] as string[] | undefined) ?? []) {
      if (!(name in object)) problems.push(`${at}: required property ${name} is missing`);
    }
    const properties = (s['properties'] as Record<string, Schema> | undefined) ?? {};
    for (const [name, child] of Object.entries(object)) {
      const declared = properties[name];
      if (declared !== undefined) problems.push(...validate(root, declared, child, `${at}.${name}`));
      else if (s['additionalProperties'] === false) problems.push(`${at}: unexpected property ${name}`);
      else if (typeof s['additionalProperties'] === 'object')
        problems.push(...validate(root, s['additionalProperties'] as Schema, child, `${at}.${name}`));
    }
  }
  if (Array.isArray(value) && s['items'] !== undefined) {
    value.forEach((item, i) => {
      problems.push(...validate(root, s['items'] as Schema, item, `${at}[${i}]`));
    });
  }
  return problems;
}

/** The spec path (`/v1/guests/{id}/log`) a request path matches, the one with fewest parameters first. */
export function specPathFor(spec: Json, pathname: string): string | undefined {
  const paths = Object.keys(spec['paths'] as Json);
  const params = (p: string) => (p.match(/\{/g) ?? []).length;
  return paths
    .filter((p) => new RegExp(`^${p.replace(/\{[^}]+\}/g, '[^/]*')}$`).test(pathname))
    .sort((a, b) => params(a) - params(b))[0];
}

/** The methods a spec path documents, upper case. */
export function specMethods(spec: Json, path: string): string[] {
  const item = (spec['paths'] as Json)[path] as Json;
  return ['get', 'put', 'post', 'delete', 'patch', 'head', 'options']
    .filter((m) => item[m] !== undefined)
    .map((m) => m.toUpperCase());
}

export interface SeenResponse {
  readonly status: number;
  /** Header names in lower case. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly body: Buffer;
}

/**
 * Checks one real response against a response object of the spec: each header it
 * marks `required` is present and matches its schema, the media type is one it
 * lists, and a JSON body matches the schema. Returns the problems.
 */
export function checkResponse(spec: Json, responseObject: unknown, seen: SeenResponse): string[] {
  const response = deref(spec, responseObject);
  const problems: string[] = [];
  for (const [name, headerObject] of Object.entries((response['headers'] as Json | undefined) ?? {})) {
    const header = deref(spec, headerObject);
    const value = seen.headers[name.toLowerCase()];
    if (value === undefined) {
      if (header['required'] === true) problems.push(`header ${name} is missing`);
      continue;
    }
    if (header['schema'] !== undefined)
      problems.push(...validate(spec, header['schema'] as Schema, value, `header ${name}`));
  }
  const content = response['content'] as Record<string, { schema?: Schema }> | undefined;
  if (content === undefined) return problems;
  const mediaType = (seen.headers['content-type'] ?? '').split(';')[0]?.trim() ?? '';
  const media = content[mediaType];
  if (media === undefined) {
    problems.push(`content-type ${mediaType} is not one of ${Object.keys(content).join(', ')}`);
    return problems;
  }
  if (mediaType === 'application/json' && media.schema !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(seen.body.toString('utf8'));
    } catch {
      return [...problems, `body is not JSON: ${seen.body.toString('utf8').slice(0, 200)}`];
    }
    problems.push(...validate(spec, media.schema, parsed, 'body'));
  }
  return problems;
}
