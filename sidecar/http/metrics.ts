/** One Prometheus metric family and its samples. */
export interface MetricFamily {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'gauge';
  readonly samples: ReadonlyArray<{ labels?: Readonly<Record<string, string>>; value: number }>;
}

export type MetricsCollector = () => MetricFamily[];

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/** Metrics are read from live state when scraped: nothing is counted twice, nothing goes stale. */
export class MetricsRegistry {
  private readonly collectors: MetricsCollector[] = [];

  add(collector: MetricsCollector): void {
    this.collectors.push(collector);
  }

  /** The Prometheus text exposition format (version 0.0.4). */
  render(): string {
    const lines: string[] = [];
    for (const collect of this.collectors) {
      for (const family of collect()) {
        lines.push(`# HELP ${family.name} ${family.help}`, `# TYPE ${family.name} ${family.type}`);
        for (const s of family.samples) {
          const labels = s.labels
            ? `{${Object.entries(s.labels)
                .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
                .join(',')}}`
            : '';
          lines.push(`${family.name}${labels} ${Number.isFinite(s.value) ? s.value : 0}`);
        }
      }
    }
    return `${lines.join('\n')}\n`;
  }
}

/** Builds metric families with one sample per guest, labelled `guest`. */
export function perGuestFamily<T extends { readonly id: string }>(items: readonly T[]) {
  return (
    name: string,
    help: string,
    type: 'counter' | 'gauge',
    value: (item: T) => number,
  ): MetricFamily => ({
    name,
    help,
    type,
    samples: items.map((item) => ({ labels: { guest: item.id }, value: value(item) })),
  });
}
