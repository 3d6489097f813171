#!/usr/bin/env node
// No import cycles among the project's TypeScript files (sidecar/, store/, common/, cli/),
// type-only imports and re-exports included: a cycle is coupling even when it erases
// at run time. Prints each cycle found and exits 1; exits 0 when there is none.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const DIRS = ['sidecar', 'store', 'common', 'cli'];

function* files(dir) {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (/\.m?ts$/.test(name) && !name.endsWith('.d.ts')) yield path;
  }
}

/** Strips comments so an import written in a comment does not count. */
function stripComments(text) {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`\\])\/\/.*$/gm, '$1');
}

// `import ... from 'x'`, `import type ... from 'x'`, `export ... from 'x'`,
// `export type ... from 'x'`, `import 'x'` and `import('x')`.
const SPECIFIERS = [
  /\b(?:import|export)\s+(?:type\s+)?[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g,
  /\bimport\s*['"]([^'"]+)['"]/g,
  /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
];

/** The project file a relative specifier names (`./x.js` is `./x.ts` in the source). */
function resolveSpecifier(from, spec) {
  const base = resolve(dirname(from), spec);
  const candidates = [base, base.replace(/\.js$/, '.ts'), base.replace(/\.mjs$/, '.mts'), `${base}.ts`, join(base, 'index.ts')];
  return candidates.find((c) => /\.m?ts$/.test(c) && existsSync(c) && statSync(c).isFile());
}

const graph = new Map();
for (const dir of DIRS) {
  for (const file of files(join(root, dir))) {
    const text = stripComments(readFileSync(file, 'utf8'));
    const edges = new Set();
    for (const re of SPECIFIERS) {
      for (const m of text.matchAll(re)) {
        if (!m[1].startsWith('.')) continue;
        const target = resolveSpecifier(file, m[1]);
        if (target) edges.add(target);
      }
    }
    graph.set(file, [...edges].sort());
  }
}

// Tarjan's strongly connected components: every file in a component of two or more
// (or one that imports itself) sits on a cycle. For each, print one concrete cycle.
let index = 0;
const stack = [];
const info = new Map();
const components = [];
function strongConnect(v) {
  info.set(v, { index, low: index, onStack: true });
  index++;
  stack.push(v);
  for (const w of graph.get(v) ?? []) {
    if (!graph.has(w)) continue;
    if (!info.has(w)) {
      strongConnect(w);
      info.get(v).low = Math.min(info.get(v).low, info.get(w).low);
    } else if (info.get(w).onStack) {
      info.get(v).low = Math.min(info.get(v).low, info.get(w).index);
    }
  }
  if (info.get(v).low === info.get(v).index) {
    const component = [];
    let w;
    do {
      w = stack.pop();
      info.get(w).onStack = false;
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || (graph.get(v) ?? []).includes(v)) components.push(component);
  }
}
for (const v of [...graph.keys()].sort()) if (!info.has(v)) strongConnect(v);

/** A shortest cycle through `start` inside its component (breadth-first). */
function cycleThrough(start, members) {
  const inside = new Set(members);
  const previous = new Map([[start, null]]);
  const queue = [start];
  while (queue.length) {
    const v = queue.shift();
    for (const w of graph.get(v) ?? []) {
      if (!inside.has(w)) continue;
      if (w === start) {
        const path = [];
        for (let x = v; x !== null; x = previous.get(x)) path.unshift(x);
        return [...path, start];
      }
      if (!previous.has(w)) {
        previous.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

const rel = (f) => relative(root, f);
if (components.length) {
  const lines = [];
  for (const component of components) {
    const members = component.sort();
    // One cycle per file in the component, deduplicated: each edge on a cycle shows up.
    const seen = new Set();
    for (const file of members) {
      const cycle = cycleThrough(file, members);
      const ring = cycle.slice(0, -1);
      const turn = ring.indexOf([...ring].sort()[0]);
      const key = [...ring.slice(turn), ...ring.slice(0, turn)].map(rel).join(' -> ');
      if (seen.has(key)) continue;
      seen.add(key);
      lines.push(`import cycle: ${key} -> ${rel(ring[turn])}`);
    }
  }
  console.error(lines.join('\n'));
  console.error(`${components.length} group(s) of files import each other in a cycle`);
  process.exit(1);
}
console.log(`import cycles ok: none among ${graph.size} files in ${DIRS.join('/, ')}/`);
