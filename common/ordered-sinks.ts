/**
 * The receivers of one producer's events, in a fixed order: named stages called in
 * the order given at construction, and within a stage in the order the sinks were
 * connected. The byte path (sidecar/guest.ts, sidecar/capture/capture.ts) uses it so that
 * who sees a byte first is written in one place instead of following from the order
 * in which listeners happened to be added.
 *
 * Like an EventEmitter, a call goes to the sinks connected when it starts: a sink
 * that disconnects (itself or another) or connects during a call changes the next one.
 */
export class OrderedSinks<Stage extends string, Sink> {
  private readonly byStage = new Map<Stage, Sink[]>();
  /** Every sink in call order; replaced, never changed in place, so a call in progress is unaffected. */
  private ordered: readonly Sink[] = [];

  constructor(readonly stages: readonly Stage[]) {
    for (const stage of stages) this.byStage.set(stage, []);
  }

  /** Connects `sink` at `stage`; returns its disconnect. */
  connect(stage: Stage, sink: Sink): () => void {
    const list = this.byStage.get(stage);
    if (!list) throw new Error(`unknown stage ${stage}`);
    list.push(sink);
    this.rebuild();
    return () => {
      const at = list.indexOf(sink);
      if (at < 0) return;
      list.splice(at, 1);
      this.rebuild();
    };
  }

  /** Calls `call` with each sink, in order. */
  each(call: (sink: Sink) => void): void {
    for (const sink of this.ordered) call(sink);
  }

  get size(): number {
    return this.ordered.length;
  }

  private rebuild(): void {
    this.ordered = this.stages.flatMap((stage) => this.byStage.get(stage) ?? []);
  }
}
