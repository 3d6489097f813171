/**
 * The source registry: every source type in one list, from which the `source` schema
 * of the config and the API, and `createSource`, are both built. A new type is a
 * sources/<kind>-source.ts exporting its `sourceType(schema, factory)`, and a line here.
 */
import { z } from 'zod';
import { execSourceType } from './exec-source.js';
import { ptySourceType } from './pty-source.js';
import { tcpSourceType, unixSourceType } from './socket-connect-source.js';
import { tcpListenSourceType, unixListenSourceType } from './socket-listen-source.js';
import type { Source, SourceContext, SourceType } from './source.js';

const SOURCE_TYPES = [
  tcpSourceType,
  tcpListenSourceType,
  unixSourceType,
  unixListenSourceType,
  ptySourceType,
  execSourceType,
] as const;

/** The schemas of `types`, as a tuple `z.discriminatedUnion` can type. */
function schemasOf<const T extends readonly SourceType<z.ZodObject>[]>(
  types: T,
): { readonly [K in keyof T]: T[K]['schema'] } {
  return types.map((t) => t.schema) as { readonly [K in keyof T]: T[K]['schema'] };
}

/** Where a guest's serial console comes from (README, "Sources"). */
export const sourceSchema = z.discriminatedUnion('type', schemasOf(SOURCE_TYPES));
export type SourceSpec = z.infer<typeof sourceSchema>;

const byType = new Map<string, SourceType<z.ZodObject>>(
  SOURCE_TYPES.map((t) => [t.schema.shape.type.value, t as SourceType<z.ZodObject>]),
);

/** Builds the source a validated spec describes. */
export function createSource(spec: SourceSpec, context: SourceContext): Source {
  const type = byType.get(spec.type);
  if (!type) throw new Error(`no source type ${spec.type}`); // the schema admits only listed types
  return type.create(spec, context);
}
