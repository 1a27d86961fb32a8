/* infdit viewer: OpenSeadragon over the server's DZI tiles, with preview → final swapping.
 *
 * Tiles of generated levels are asked as a preview (the Lanczos upscale, answered at once,
 * never cached) until the server's events say every block under them is done; then the tile's
 * final URL is used. OpenSeadragon keeps a loaded tile and never reloads it, so the swap adds
 * a fresh layer ("generation") on top whose getTileUrl sees the new state, and removes the old
 * layer only once the new one is fully loaded: the view never flashes and no stale tile stays.
 */
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const state = window.infdit = {
    id: null, st: null, done: new Uint8Array(0), doneCount: 0, gen: 0, layers: [], compareLayer: null, swapping: false,
    failed: 0, loaded: 0, finalLoaded: 0, previewLoaded: 0, es: null, pollTimer: null, events: 0,
  };

  const viewer = OpenSeadragon({
    id: 'osd', showNavigator: true, navigatorPosition: 'BOTTOM_RIGHT', prefixUrl: 'vendor/openseadragon/images/',
    timeout: 120000, maxZoomPixelRatio: 2, crossOriginPolicy: 'Anonymous', immediateRender: false,
    imageLoaderLimit: 6, showRotationControl: false, preserveImageSizeOnResize: true,
  });
  state.viewer = viewer;

  // ----------------------------------------------------------------- tiles

  function log2(n) { return Math.log(n) / Math.LN2; }

  /** Are all last-stage blocks under tile (L, x, y) done? */
  function tileFinal(st, L, x, y) {
    if (L <= st.sourceMaxLevel) return true;
    const f = Math.pow(2, st.maxLevel - L), T = st.tileSize, O = st.overlap;
    const lw = Math.ceil(st.width / f), lh = Math.ceil(st.height / f);
    const x0 = Math.max(0, x * T - O) * f, y0 = Math.max(0, y * T - O) * f;
    const x1 = Math.min(st.width, Math.min(lw, (x + 1) * T + O) * f), y1 = Math.min(st.height, Math.min(lh, (y + 1) * T + O) * f);
    const B = st.blocks.size;
    for (let r = Math.floor(y0 / B); r <= Math.floor((y1 - 1) / B); r++)
      for (let c = Math.floor(x0 / B); c <= Math.floor((x1 - 1) / B); c++)
        if (!state.done[r * st.blocks.cols + c]) return false;
    return true;
  }

  function tileSource(st, gen, mode) {
    return {
      width: st.width, height: st.height, tileSize: st.tileSize, tileOverlap: st.overlap, minLevel: 0, maxLevel: st.maxLevel,
      getTileUrl(L, x, y) {
        const base = `/images/${st.id}_files/${L}/${x}_${y}.${st.format}`;
        if (L <= st.sourceMaxLevel) return base;
        if (mode === 'lanczos') return `${base}?preview=lanczos`;
        return tileFinal(st, L, x, y) ? base : `${base}?preview=1&g=${gen}`;
      },
    };
  }

  function addLayer(onReady) {
    const st = state.st, gen = ++state.gen;
    viewer.addTiledImage({
      tileSource: tileSource(st, gen, 'infdit'), index: state.layers.length,
      success(ev) {
        const ti = ev.item;
        ti.infditGen = gen; ti.previews = new Set();
        state.layers.push(ti);
        onReady && onReady(ti);
      },
      error(ev) { showProgress(`could not open the image: ${ev.message}`); },
    });
  }

  /** Replace the top layer by a fresh one once it has fully loaded. */
  function refreshTiles() {
    if (state.swapping || !state.st) return;
    const top = state.layers[state.layers.length - 1];
    if (!top) return;
    const stale = [...top.previews].some(k => { const [L, x, y] = k.split('/').map(Number); return tileFinal(state.st, L, x, y); });
    if (!stale && !top.hadFailure) return;
    state.swapping = true;
    addLayer((ti) => {
      const finish = () => {
        for (const old of state.layers.filter(l => l !== ti)) viewer.world.removeItem(old);
        state.layers = [ti];
        state.swapping = false;
        setTimeout(refreshTiles, 50);
      };
      if (ti.getFullyLoaded()) finish();
      else ti.addOnceHandler('fully-loaded-change', finish);
    });
  }
  let refreshTimer = null;
  function scheduleRefresh() { clearTimeout(refreshTimer); refreshTimer = setTimeout(refreshTiles, 300); }

  viewer.addHandler('tile-loaded', (ev) => {
    const t = ev.tile, ti = ev.tiledImage;
    state.loaded++;
    const url = typeof t.getUrl === 'function' ? t.getUrl() : t.url;
    const key = `${t.level}/${t.x}/${t.y}`;
    if (ti === state.compareLayer) return;
    if (/[?&]preview=1/.test(url)) { state.previewLoaded++; ti.previews && ti.previews.add(key); scheduleRefresh(); }
    else state.finalLoaded++;
  });
  viewer.addHandler('tile-load-failed', (ev) => {
    state.failed++;
    if (ev.tiledImage) ev.tiledImage.hadFailure = true;
    scheduleRefresh();
  });

  // ----------------------------------------------------------------- compare

  function setCompare(on) {
    $('compare').setAttribute('aria-pressed', String(on));
    $('swipe').disabled = !on;
    if (!on && state.compareLayer) { viewer.world.removeItem(state.compareLayer); state.compareLayer = null; }
    if (on && !state.compareLayer && state.st) {
      viewer.addTiledImage({
        tileSource: tileSource(state.st, 0, 'lanczos'),
        success(ev) { state.compareLayer = ev.item; applySwipe(); },
      });
    }
  }
  function applySwipe() {
    if (!state.compareLayer || !state.st) return;
    const p = Number($('swipe').value) / 100;
    state.compareLayer.setClip(new OpenSeadragon.Rect(0, 0, state.st.width * p, state.st.height));
  }
  $('compare').addEventListener('click', () => setCompare($('compare').getAttribute('aria-pressed') !== 'true'));
  $('swipe').addEventListener('input', applySwipe);
  $('show-pending').addEventListener('change', () => state.st && drawOverlay());

  // ----------------------------------------------------------------- progress

  function showProgress(text) { $('progress').textContent = text; }

  function renderProgress() {
    const st = state.st;
    if (!st) return;
    const total = st.blocks.total, done = state.doneCount;
    const pct = total ? Math.floor((1000 * done) / total) / 10 : 100;
    const eta = st.etaSeconds != null && done < total ? ` · about ${formatSecs(st.etaSeconds)} left` : '';
    showProgress(done >= total ? `Detail complete: 100% (${total} blocks)` : `Generating detail: ${pct}% (${done}/${total} blocks)${eta}`);
    $('progress').dataset.percent = String(pct);
    drawBlocks();
  }
  state.renderProgress = renderProgress;   // for tests: one redraw of the progress, timed from outside
  function formatSecs(s) { return s < 90 ? `${s} s` : `${Math.round(s / 60)} min`; }

  /** Pending blocks shaded on the image itself (an OpenSeadragon overlay), so a viewer sees where
   *  detail is still coming; it empties as blocks finish and goes away at 100%. */
  function drawOverlay() {
    const st = state.st;
    if (!st) return;
    let cv = state.overlay;
    if (!cv) {
      cv = state.overlay = document.createElement('canvas');
      cv.className = 'pending-overlay'; cv.setAttribute('aria-hidden', 'true');
      // the block grid covers the LR padded to whole blocks: size the overlay by blocks, not by the image
      const B = st.blocks.size;
      viewer.addOverlay({ element: cv, location: new OpenSeadragon.Rect(0, 0, st.blocks.cols * B / st.width, st.blocks.rows * B / st.width) });
    }
    const { rows, cols } = st.blocks;
    if (cv.width !== cols || cv.height !== rows) { cv.width = cols; cv.height = rows; }
    const ctx = cv.getContext('2d');
    if (!$('show-pending').checked) { ctx.clearRect(0, 0, cols, rows); return; }
    // one pixel a block, written at once: a fillRect per pending block stalled the page at 200,000 blocks
    const img = ctx.createImageData(cols, rows), px = img.data;
    for (let i = 0; i < rows * cols; i++) if (!state.done[i]) { px[4 * i] = 24; px[4 * i + 1] = 24; px[4 * i + 2] = 27; px[4 * i + 3] = 89; }
    ctx.putImageData(img, 0, 0);
  }

  function drawBlocks() {
    drawOverlay();
    const st = state.st, cv = $('blocks'), ctx = cv.getContext('2d');
    const { rows, cols } = st.blocks;
    // at most 160×120 cells, each the share of its blocks done (grey → green), drawn once as an
    // image and scaled by CSS (pixelated): readable and cheap at any number of blocks
    const fit = Math.min(1, 160 / cols, 120 / rows), W = Math.max(1, Math.round(cols * fit)), H = Math.max(1, Math.round(rows * fit));
    if (cv.width !== W || cv.height !== H) { cv.width = W; cv.height = H; }
    const k = Math.min(160 / W, 120 / H);
    cv.style.width = `${Math.round(W * k)}px`; cv.style.height = `${Math.round(H * k)}px`;
    const sum = new Uint32Array(W * H), n = new Uint32Array(W * H);
    for (let r = 0; r < rows; r++) {
      const y = Math.floor((r * H) / rows);
      for (let c = 0; c < cols; c++) { const i = y * W + Math.floor((c * W) / cols); n[i]++; sum[i] += state.done[r * cols + c]; }
    }
    const img = ctx.createImageData(W, H), px = img.data;
    for (let i = 0; i < W * H; i++) {
      const f = n[i] ? sum[i] / n[i] : 0;
      px[4 * i] = 63 + f * (34 - 63); px[4 * i + 1] = 63 + f * (197 - 63); px[4 * i + 2] = 70 + f * (94 - 70); px[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    cv.setAttribute('aria-label', `Generated blocks: ${state.doneCount} of ${st.blocks.total}`);
  }

  /** Exact per-block progress, run-length coded by the server (lib/tiles/progress.ts). */
  async function fetchBlocks(id, total) {
    const r = await fetch(`/api/images/${id}/blocks`);
    if (!r.ok) return null;
    const { runs } = await r.json();
    const bytes = Uint8Array.from(atob(runs), ch => ch.charCodeAt(0)), done = new Uint8Array(total);
    let at = 0, cur = 0, count = 0;
    for (let i = 0; i < bytes.length;) {
      let v = 0, mul = 1, b;
      do { b = bytes[i++]; v += (b & 0x7f) * mul; mul *= 128; } while (b & 0x80);
      if (cur) { done.fill(1, at, at + v); count += v; }
      at += v; cur ^= 1;
    }
    return { done, count };
  }

  let drawPending = false;
  /** Progress redrawn at most once a frame, however many block events arrive. */
  function scheduleProgress() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; renderProgress(); });
  }

  async function pollStatus() {
    if (!state.id) return;
    try {
      const r = await fetch(`/api/images/${state.id}`);
      if (r.ok) {
        const st = await r.json();
        if (st.id === state.id) {
          state.st.etaSeconds = st.etaSeconds;
          if (st.blocks.done > state.doneCount) {   // events were missed: catch up from the exact map
            const b = await fetchBlocks(state.id, state.st.blocks.total);
            if (b && state.id === st.id) { for (let i = 0; i < b.done.length; i++) if (b.done[i] && !state.done[i]) { state.done[i] = 1; state.doneCount++; } }
          }
          scheduleProgress(); scheduleRefresh();
        }
      }
    } catch { /* the next poll or event will catch up */ }
    clearTimeout(state.pollTimer);
    if (state.doneCount < state.st.blocks.total) state.pollTimer = setTimeout(pollStatus, 3000);
  }

  // ----------------------------------------------------------------- open an image

  async function open(id) {
    const r = await fetch(`/api/images/${encodeURIComponent(id)}`);
    if (!r.ok) { showProgress(`Image ${id} not found`); return; }
    const st = await r.json();
    if (state.es) state.es.close();
    clearTimeout(state.pollTimer);
    const b = await fetchBlocks(id, st.blocks.total);
    Object.assign(state, { id, st, done: b ? b.done : new Uint8Array(st.blocks.total), doneCount: b ? b.count : 0, layers: [], compareLayer: null, swapping: false });
    viewer.world.removeAll();
    if (state.overlay) { viewer.removeOverlay(state.overlay); state.overlay = null; }
    setCompare(false);
    $('compare').disabled = false;
    $('dzi-url').value = st.urls.dzi;
    $('iiif-url').value = st.urls.iiif;
    $('download').href = st.urls.download;
    $('download').setAttribute('download', `${st.id}.tar`);
    for (const b of document.querySelectorAll('#gallery button')) b.setAttribute('aria-current', String(b.dataset.id === id));
    if (location.hash !== '#' + id) history.replaceState(null, '', '#' + id);
    addLayer();
    renderProgress();
    const es = state.es = new EventSource(`/api/images/${id}/events`);
    es.addEventListener('block', (e) => {
      const d = JSON.parse(e.data);
      state.events++;
      const k = d.r * st.blocks.cols + d.c;
      if (!state.done[k]) { state.done[k] = 1; state.doneCount++; }
      scheduleProgress(); scheduleRefresh();
    });
    pollStatus();
  }

  // ----------------------------------------------------------------- gallery and upload

  async function loadGallery(openId) {
    const r = await fetch('/api/images');
    const { images } = await r.json();
    const ul = $('gallery');
    ul.replaceChildren();
    for (const im of images) {
      const M = Math.ceil(log2(Math.max(im.width, im.height)));
      const L = Math.max(0, Math.min(M - log2(im.scale), Math.floor(log2(im.tileSize))));
      const li = document.createElement('li'), b = document.createElement('button'), img = document.createElement('img'), span = document.createElement('span');
      b.type = 'button'; b.dataset.id = im.id;
      img.src = `/images/${im.id}_files/${L}/0_0.${im.format}`; img.alt = '';
      span.textContent = `${im.demo ? 'Demo: ' : ''}${im.name} (${im.lrWidth}×${im.lrHeight} → ${im.width}×${im.height})`;
      b.append(img, span);
      b.addEventListener('click', () => open(im.id));
      li.append(b); ul.append(li);
    }
    const target = openId || location.hash.slice(1) || (images[0] && images[0].id);
    if (target && images.some(i => i.id === target)) open(target);
  }

  async function upload(file) {
    const msg = $('upload-msg');
    msg.className = ''; msg.textContent = `Uploading ${file.name}…`;
    const fd = new FormData(); fd.append('image', file, file.name);
    try {
      const r = await fetch('/api/images', { method: 'POST', body: fd });
      const body = await r.json().catch(() => ({ error: `server answered ${r.status}` }));
      if (!r.ok) { msg.className = 'error'; msg.textContent = `Not uploaded: ${body.error}`; return; }
      msg.textContent = `Uploaded ${file.name}`;
      await loadGallery(body.id);
    } catch (e) { msg.className = 'error'; msg.textContent = `Upload failed: ${e.message}`; }
  }

  $('file').addEventListener('change', (e) => { const f = e.target.files[0]; if (f) upload(f); e.target.value = ''; });
  const drop = $('drop');
  for (const ev of ['dragenter', 'dragover']) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('over'); });
  for (const ev of ['dragleave', 'drop']) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove('over'); });
  drop.addEventListener('drop', (e) => { const f = e.dataTransfer.files[0]; if (f) upload(f); });
  for (const b of document.querySelectorAll('[data-copy]')) b.addEventListener('click', async () => {
    const input = $(b.dataset.copy); input.select();
    try { await navigator.clipboard.writeText(input.value); b.textContent = 'Copied'; } catch { document.execCommand('copy'); b.textContent = 'Copied'; }
    setTimeout(() => { b.textContent = 'Copy'; }, 1500);
  });
  window.addEventListener('hashchange', () => { const id = location.hash.slice(1); if (id && id !== state.id) open(id); });

  loadGallery();
})();
