/**
 * The console's view of the cluster over Redis (docs/design.md "Console across
 * hosts"): whether a guest's console is served here, where its owner is (the owner
 * hash, then the owner's entry in the host registry), and the writer lock a
 * migration's source keeps for the destination.
 */

import { HostRegistry } from '../../store/replication/host-registry.js';
import { writerReservationKey } from '../../store/replication/redis-keys.js';
import type { ConsoleCluster, ConsolePlace, OwnerAddress } from '../console/console-cluster.js';
import type { LockReservation } from '../console/writer-lock.js';
import type { ReplicationService } from './replication-service.js';

/** Roles in which this host no longer serves the guest's console: its owner does. */
const SERVED_ELSEWHERE = new Set(['handed-off', 'fenced']);
/** Roles of a migration's destination before its log is in the stream's numbering. */
const ARRIVING = new Set(['incoming', 'adopting']);

export class ConsoleDirectory implements ConsoleCluster {
  private readonly registry: HostRegistry;

  constructor(
    private readonly replication: ReplicationService,
    private readonly keyPrefix: string,
  ) {
    this.registry = new HostRegistry(replication.connection.client, keyPrefix);
  }

  get seams(): ConsoleCluster['seams'] {
    return this.replication.seams;
  }

  get hostId(): string {
    return this.replication.hostId;
  }

  place(guestId: string): ConsolePlace {
    const role = this.replication.roleOf(guestId);
    if (role === null || SERVED_ELSEWHERE.has(role)) return 'elsewhere';
    return ARRIVING.has(role) ? 'arriving' : 'here';
  }

  async locateOwner(guestId: string): Promise<OwnerAddress | null> {
    const owner = await this.replication.shared.owner(guestId);
    if (owner.host === null) return null;
    const record = await this.registry.get(owner.host);
    return record ? { hostId: record.hostId, apiUrl: record.apiUrl } : null;
  }

  async keepWriter(guestId: string, reservation: LockReservation): Promise<void> {
    const ttlMs = Math.ceil(reservation.untilMs - Date.now());
    if (ttlMs <= 0) return;
    await this.replication.connection.client.set(
      writerReservationKey(this.keyPrefix, guestId),
      JSON.stringify(reservation),
      'PX',
      ttlMs,
    );
  }

  async keptWriter(guestId: string): Promise<LockReservation | null> {
    const text = await this.replication.connection.client.getdel(
      writerReservationKey(this.keyPrefix, guestId),
    );
    if (text === null) return null;
    try {
      const r = JSON.parse(text) as Partial<LockReservation>;
      if (typeof r.name !== 'string' || typeof r.untilMs !== 'number') return null;
      if (r.chain !== undefined && typeof r.chain !== 'string') return null;
      return { ...r, name: r.name, untilMs: r.untilMs };
    } catch {
      return null;
    }
  }
}
