import { AbortError } from '../engine/engine.js';

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

/**
 * Coalescing that can be called off: callers of one key share one run, and the run's signal aborts
 * once every caller has gone (its own signal aborted). A caller without a signal never goes. A key
 * whose callers all went is forgotten at once, so the next caller starts afresh instead of joining
 * a run that is stopping.
 */
export class SharedCancellable<T> {
  private inflight = new Map<string, { p: Promise<T>; ac: AbortController; n: number }>();
  get size() { return this.inflight.size; }
  run(key: string, make: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(new AbortError());
    let e = this.inflight.get(key);
    if (!e) {
      const entry = { p: undefined as unknown as Promise<T>, ac: new AbortController(), n: 0 };
      entry.p = make(entry.ac.signal).finally(() => { if (this.inflight.get(key) === entry) this.inflight.delete(key); });
      this.inflight.set(key, entry);
      e = entry;
    }
    const entry = e;
    entry.n++;
    if (!signal) return entry.p;
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        if (--entry.n === 0) {
          if (this.inflight.get(key) === entry) this.inflight.delete(key);
          entry.ac.abort();
        }
        reject(new AbortError());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      entry.p.then(v => { signal.removeEventListener('abort', onAbort); resolve(v); },
        err => { signal.removeEventListener('abort', onAbort); reject(err); });
    });
  }
}
