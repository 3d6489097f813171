/** Where consoled looks when nothing says otherwise (README "Configuration"). */
export const DEFAULT_CONFIG_PATH = '/etc/consoled/consoled.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/consoled';
