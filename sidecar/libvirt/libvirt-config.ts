/**
 * The `libvirt` section of the configuration: what the QEMU hook (`cli/libvirt-hook.ts`)
 * and the daemon's spool replay (`attach-spool.ts`) share (README "libvirt").
 */
import { join } from 'node:path';
import { z } from 'zod';

export const LIBVIRT_DEFAULTS = {
  /** The user the daemon runs as: the hook grants it access to a guest's pty. */
  consoledUser: 'consoled',
  /** How long an attach from the hook waits for the source to connect. */
  connectWaitMs: 2000,
  /** How long the hook waits for one API call before it leaves the request in the spool. */
  requestTimeoutMs: 5000,
} as const;

export const libvirtConfigSchema = z
  .object({
    /**
     * Where the hook spools its requests for the daemon to replay at start.
     * @default `<stateDir>/libvirt-spool`
     */
    spoolDir: z.string().startsWith('/').optional(),
    consoledUser: z
      .string()
      .regex(/^[a-z_][a-z0-9_-]*\$?$/i, 'not a user name')
      .default(LIBVIRT_DEFAULTS.consoledUser),
    connectWaitMs: z.number().int().min(0).max(30_000).default(LIBVIRT_DEFAULTS.connectWaitMs),
    requestTimeoutMs: z.number().int().min(100).max(60_000).default(LIBVIRT_DEFAULTS.requestTimeoutMs),
  })
  .strict()
  .prefault({});

export type LibvirtConfig = z.infer<typeof libvirtConfigSchema>;

/** The spool directory the configuration names (README "libvirt"). */
export function libvirtSpoolDir(config: {
  readonly stateDir: string;
  readonly libvirt: LibvirtConfig;
}): string {
  return config.libvirt.spoolDir ?? join(config.stateDir, 'libvirt-spool');
}
