/**
 * Runs `callback` in a microtask, as `queueMicrotask` does, in the same queue and order,
 * without the async-hooks resource Node's `queueMicrotask` makes for every call. On
 * the paths that use it (a log append, a console's echo) that resource and its scope
 * cost more than the callback did (docs/benchmarks.md). A callback that throws ends
 * the process as an unhandled rejection, as an uncaught exception would.
 */
const settled = Promise.resolve();

export function inMicrotask(callback: () => void): void {
  void settled.then(callback);
}
