/**
 * The contract lives in the repository: no source, test, script or document cites the
 * design or style notes that live outside it, and every citation of a section of docs/design.md
 * or docs/replication.md (`docs/design.md "Redis schema"`) names a heading that exists.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/daemon.js';

const DIRS = ['sidecar', 'store', 'common', 'cli', 'test', 'scripts'];
/** Spelled in pieces so that this file does not cite them itself. */
const OUTSIDE = ['DESIGN', 'STYLE'].map((name) => `${name}.md`);
const DOCS = ['design.md', 'replication.md'];

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'bench-results' ? [] : files(path);
    return /\.(ts|mts|mjs|js|lua)$/.test(name) ? [path] : [];
  });
}

function headings(doc: string): Set<string> {
  const text = readFileSync(join(REPO_ROOT, 'docs', doc), 'utf8');
  return new Set([...text.matchAll(/^#{2,4} (.+)$/gm)].map((m) => m[1]!.trim()));
}

/** The problems of one file's text: outside citations, and cited sections that do not exist. */
function citationProblems(
  name: string,
  text: string,
  sections: ReadonlyMap<string, ReadonlySet<string>>,
): string[] {
  const problems: string[] = [];
  for (const outside of OUTSIDE) {
    if (text.includes(outside)) problems.push(`${name} cites ${outside}, which is outside the repository`);
  }
  for (const [doc, known] of sections) {
    const cite = new RegExp(`docs/${doc.replace('.', '\\.')}`, 'g');
    for (const m of text.matchAll(cite)) {
      // The quoted names right after the citation, across a comment's line break.
      const after = text
        .slice((m.index ?? 0) + m[0].length, (m.index ?? 0) + m[0].length + 120)
        .replace(/\n\s*(?:\*|\/\/|--)?\s*/g, ' ');
      const quoted = /^[\s,(]*((?:"[^"]+"(?:,\s*)?)+)/.exec(after);
      for (const section of quoted ? [...quoted[1]!.matchAll(/"([^"]+)"/g)].map((q) => q[1]!) : []) {
        if (!known.has(section))
          problems.push(`${name} cites docs/${doc} "${section}", which has no such heading`);
      }
    }
  }
  return problems;
}

const sections = new Map(DOCS.map((doc) => [doc, headings(doc)]));

describe('citations of the design contract', () => {
  it('point into the repository, at sections that exist', () => {
    const docs = [
      'README.md',
      'SECURITY.md',
      ...readdirSync(join(REPO_ROOT, 'docs')).map((n) => join('docs', n)),
    ];
    const paths = [
      ...DIRS.flatMap((dir) => files(join(REPO_ROOT, dir))),
      ...docs.map((p) => join(REPO_ROOT, p)),
    ];
    const problems = paths.flatMap((path) =>
      citationProblems(relative(REPO_ROOT, path), readFileSync(path, 'utf8'), sections),
    );
    expect(problems).toEqual([]);
  });

  it('the check finds an outside citation and a section that does not exist', () => {
    // Put together here, so that this file does not carry the wrong citation itself.
    const design = ['docs', 'design.md'].join('/');
    const text = `// see ${OUTSIDE[0]} item 3\n/** the keys (${design}\n * "Redis schema", "Redis keys") */\n`;
    expect(citationProblems('x.ts', text, sections)).toEqual([
      `x.ts cites ${OUTSIDE[0]}, which is outside the repository`,
      `x.ts cites ${design} "Redis keys", which has no such heading`,
    ]);
  });
});
