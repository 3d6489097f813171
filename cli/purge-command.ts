import { parseArgs } from 'node:util';
import { ConsoledError } from '../common/errors.js';
import { assertGuestId } from '../common/guest-id.js';
import type { PurgeResult } from '../sidecar/http/history-route.js';
import { type ApiTarget, apiRequest } from './api-client.js';

/**
 * `consolectl purge ID [--local | --cluster] [--json]`: deletes a detached guest's
 * history (README "Retention"): with neither flag both this host's files and the Redis
 * stream, else only the one named. Prints what was removed.
 */
export async function purgeCommand(target: ApiTarget, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { local: { type: 'boolean' }, cluster: { type: 'boolean' }, json: { type: 'boolean' } },
  });
  const guest = assertGuestId(positionals[0]);
  if (values.local && values.cluster)
    throw new ConsoledError('BAD_PARAMETER', 'give --local or --cluster, or neither for both');
  const scope = values.local ? 'local' : values.cluster ? 'cluster' : 'all';
  const res = await apiRequest(
    target,
    'DELETE',
    `/v1/guests/${encodeURIComponent(guest)}/history?scope=${scope}`,
  );
  const result = (await res.json()) as PurgeResult;
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  const parts: string[] = [];
  if (result.local) {
    parts.push(
      result.local.removed
        ? `local: ${result.local.files} files, ${result.local.bytes} bytes removed`
        : 'local: nothing here',
    );
  }
  if (result.cluster) {
    parts.push(
      result.cluster.removed
        ? `cluster: ${result.cluster.deletedKeys} Redis keys deleted`
        : 'cluster: no stream',
    );
  }
  process.stdout.write(`${guest}: ${parts.join('; ')}\n`);
}
