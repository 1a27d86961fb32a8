/**
 * When a wait on a page fails, say why: which of the page's requests the server had not answered,
 * and for how long, and how long this process's event loop (the test's server runs in it) was
 * held. A CI run once timed out in `page.goto` with nothing else to go on; the next one names it.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Page, Request } from 'playwright-core';

export function watchPage(page: Page, base: string) {
  const open = new Map<Request, number>(), lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  page.on('request', r => open.set(r, performance.now()));
  page.on('requestfinished', r => open.delete(r));
  page.on('requestfailed', r => open.delete(r));
  const explain = () => {
    const now = performance.now();
    const waiting = [...open].map(([r, t]) => `${r.method()} ${r.url().replace(base, '')} (${(now - t).toFixed(0)} ms)`);
    return `unanswered: ${waiting.join(', ') || 'none'}; this process's event loop held at most ${(lag.max / 1e6).toFixed(0)} ms`;
  };
  return {
    /** `p`, or its error with what the page was waiting for. */
    async explained<T>(p: Promise<T>): Promise<T> {
      try { return await p; } catch (e) { (e as Error).message += `\n${explain()}`; throw e; }
    },
    stop() { lag.disable(); },
  };
}
