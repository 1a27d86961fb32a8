/** Request coalescing: callers asking for the same key share one in-flight promise. */
export class SharedPromiseCache<T> {
  private inflight = new Map<string, Promise<T>>();
  get size() { return this.inflight.size; }
  run(key: string, make: () => Promise<T>): Promise<T> {
    let p = this.inflight.get(key);
    if (!p) {
      p = make().finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }
}
