/* infdit viewer: OpenSeadragon over the server's DZI tiles, with preview → final swapping.
 *
 * What is in view is generated first: on every change of view the page states it to the server
 * (POST /api/images/<id>/view: the level OpenSeadragon draws and the rectangle it shows, where the
 * animation is heading), renewed while tiles in view are still coming, withdrawn when the page
 * goes; the server makes those tiles first, nearest the centre first, and drops what left the view.
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
    // this page's name towards the server, so that its next view replaces the last one
    viewerId: Array.from(crypto.getRandomValues(new Uint8Array(12)), b => b.toString(16).padStart(2, '0')).join(''),
    view: null, viewKey: '', viewAt: 0, views: 0, finalTiles: new Set(), split: 0.5, clipX: -1,
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
    else if (t.level > state.st.sourceMaxLevel) { state.finalLoaded++; state.finalTiles.add(key); }
  });
  viewer.addHandler('tile-load-failed', (ev) => {
    state.failed++;
    if (ev.tiledImage) ev.tiledImage.hadFailure = true;
    scheduleRefresh();
  });

  // ----------------------------------------------------------------- compare

  /* The Lanczos layer lies over the generated one, clipped to the left of a divider that stays
   * where it is on the screen (the clip is recomputed in image coordinates as the view moves),
   * so the two can be compared wherever one is zoomed in. */
  function setCompare(on) {
    $('compare').setAttribute('aria-pressed', String(on));
    $('divider').hidden = !on;
    if (!on && state.compareLayer) { viewer.world.removeItem(state.compareLayer); state.compareLayer = null; }
    if (on && !state.compareLayer && state.st) {
      viewer.addTiledImage({
        tileSource: tileSource(state.st, 0, 'lanczos'),
        success(ev) { state.compareLayer = ev.item; state.clipX = -1; applySwipe(); },
      });
    }
  }
  function applySwipe() {
    const d = $('divider'), w = viewer.container.clientWidth;
    d.style.left = `${(100 * state.split).toFixed(2)}%`;
    $('divider-handle').setAttribute('aria-valuenow', String(Math.round(100 * state.split)));
    if (!state.compareLayer || !state.st) return;
    const p = state.compareLayer.viewerElementToImageCoordinates(new OpenSeadragon.Point(state.split * w, 0));
    const x = Math.max(0, Math.min(state.st.width, p.x));
    if (Math.abs(x - state.clipX) < 0.01) return;      // unchanged: no redraw (this runs every frame)
    state.clipX = x;
    state.compareLayer.setClip(new OpenSeadragon.Rect(0, 0, x, state.st.height));
  }
  function moveSplit(f) { state.split = Math.max(0, Math.min(1, f)); applySwipe(); }
  viewer.addHandler('update-viewport', applySwipe);
  $('compare').addEventListener('click', () => setCompare($('compare').getAttribute('aria-pressed') !== 'true'));
  {
    const handle = $('divider-handle');
    const at = (e) => { const r = viewer.container.getBoundingClientRect(); moveSplit((e.clientX - r.left) / r.width); };
    handle.addEventListener('pointerdown', (e) => { handle.setPointerCapture(e.pointerId); at(e); e.preventDefault(); });
    handle.addEventListener('pointermove', (e) => { if (handle.hasPointerCapture(e.pointerId)) at(e); });
    handle.addEventListener('keydown', (e) => {
      const step = e.shiftKey ? 0.1 : 0.02;
      if (e.key === 'ArrowLeft') moveSplit(state.split - step);
      else if (e.key === 'ArrowRight') moveSplit(state.split + step);
      else return;
      e.preventDefault();
    });
  }
  $('show-pending').addEventListener('change', () => state.st && drawOverlay());

  // ----------------------------------------------------------------- the view drives generation

  /** The level OpenSeadragon draws at the zoom the view is heading to (its finest level whose
   *  pixel covers at least minPixelRatio screen pixels), and the rectangle it will show. */
  function currentView() {
    const st = state.st, ti = state.layers[0];
    if (!st || !ti) return null;
    const vp = viewer.viewport, z = ti.viewportToImageZoom(vp.getZoom(false));
    const level = Math.max(0, Math.min(st.maxLevel, Math.floor(st.maxLevel + Math.log2(z / viewer.minPixelRatio) + 1e-9)));
    const b = ti.viewportToImageRectangle(vp.getBounds(false));
    const x0 = Math.max(0, Math.floor(b.x)), y0 = Math.max(0, Math.floor(b.y));
    const x1 = Math.min(st.width, Math.ceil(b.x + b.width)), y1 = Math.min(st.height, Math.ceil(b.y + b.height));
    if (x1 <= x0 || y1 <= y0) return { level, x: 0, y: 0, width: 0, height: 0 };
    return { level, x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  }

  /** Tiles of the view (the level's tile range): a change of range is a new view to state. */
  function viewKey(st, v) {
    if (!v.width || v.level <= st.sourceMaxLevel) return 'photo';
    const k = Math.pow(2, st.maxLevel - v.level), T = st.tileSize, f = (a) => Math.floor(a / k / T);
    return `${v.level}:${f(v.x)}-${f(v.x + v.width - 1)}:${f(v.y)}-${f(v.y + v.height - 1)}`;
  }

  /** The key of the view on the screen now (what the next statement will say). */
  state.viewKeyNow = () => { const v = currentView(); return state.st && v ? viewKey(state.st, v) : ''; };

  function viewPending() { return state.view ? state.view.tiles.filter(([L, x, y]) => !tileFinal(state.st, L, x, y)).length : 0; }

  /** State the view when its tiles change, and again before the lease lapses while some are
   *  still coming (the server forgets a view not stated for its lease). */
  async function stateView(force) {
    const st = state.st, v = currentView();
    if (!st || !v) return;
    const key = viewKey(st, v), id = state.id;
    const lease = state.view ? state.view.leaseMs : 30000;
    if (!force && key === state.viewKey && (Date.now() - state.viewAt < lease / 3 || !viewPending())) return;
    state.viewKey = key; state.viewAt = Date.now();
    const body = key === 'photo' ? { viewer: state.viewerId } : { viewer: state.viewerId, ...v };
    try {
      const r = await fetch(`/api/images/${id}/view`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (!r.ok || state.id !== id || state.viewKey !== key) return;
      state.view = { ...await r.json(), key };
      state.views++;
      renderProgress();
    } catch { state.viewKey = ''; /* stated again on the next change or renewal */ }
  }
  let viewTimer = null;
  function viewChanged() { clearTimeout(viewTimer); viewTimer = setTimeout(stateView, 120); }
  for (const ev of ['zoom', 'pan', 'resize', 'animation-finish']) viewer.addHandler(ev, viewChanged);
  setInterval(() => stateView(false), 5000);
  // the page goes: its view is withdrawn now rather than when the lease lapses
  window.addEventListener('pagehide', () => {
    if (state.id) navigator.sendBeacon(`/api/images/${state.id}/view`, new Blob([JSON.stringify({ viewer: state.viewerId })], { type: 'application/json' }));
  });

  // ----------------------------------------------------------------- progress

  function showProgress(text) { $('progress').textContent = text; }

  function renderProgress() {
    const st = state.st;
    if (!st) return;
    const total = st.blocks.total, done = state.doneCount;
    const pct = total ? Math.floor((1000 * done) / total) / 10 : 100;
    const eta = !st.backgroundFill ? ' · background fill off: detail is made where you look' :
      st.etaSeconds != null && done < total ? ` · about ${formatSecs(st.etaSeconds)} left for the whole image` : '';
    // until a tile is final it shows the preview: say which, so nobody takes it for the final detail
    const shown = st.preview === 'base' ? ' · not yet final: the base super-resolver' : ' · not yet final: Lanczos3';
    showProgress(done >= total ? `Detail complete: 100% (${total} blocks)` : `Generating detail: ${pct}% (${done}/${total} blocks)${shown}${eta}`);
    $('progress').dataset.percent = String(pct);
    const v = state.view, n = v ? v.tiles.length : 0, left = viewPending();
    $('view-state').textContent = done >= total ? '' : !v ? '' : n === 0 ? 'In view: the photo itself (zoom in for generated detail)'
      : left ? `Generating what you look at: ${n - left} of ${n} tiles done` : `In view: all ${n} tiles done`;
    $('view-state').dataset.pending = String(left);
    drawBlocks();
  }
  state.renderProgress = renderProgress;   // for tests: one redraw of the progress, timed from outside
  // coarse steps: a figure that changes every second by a little reads as noise
  function formatSecs(s) { return s < 90 ? `${Math.max(5, Math.round(s / 5) * 5)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`; }

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
    $('blocks-caption').textContent = `Block map: ${state.doneCount} of ${st.blocks.total} blocks generated (${st.blocks.size} px each; green done, grey to come)`;
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
          state.st.etaSeconds = st.etaSeconds; state.st.backgroundFill = st.backgroundFill;
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
    Object.assign(state, { id, st, done: b ? b.done : new Uint8Array(st.blocks.total), doneCount: b ? b.count : 0, layers: [], compareLayer: null, swapping: false, view: null, viewKey: '', finalTiles: new Set() });
    viewer.world.removeAll();
    if (state.overlay) { viewer.removeOverlay(state.overlay); state.overlay = null; }
    setCompare(false);
    $('compare').disabled = false;
    // the divider's right side is what the main layer shows: final tiles, and previews until then
    $('divider').querySelector('.side.right').textContent = st.preview === 'base' ? 'infdit (base until final)' : 'infdit (Lanczos3 until final)';
    $('dzi-url').value = st.urls.dzi;
    $('iiif-url').value = st.urls.iiif;
    $('download').href = st.urls.download;
    $('download').setAttribute('download', `${st.id}.tar`);
    for (const b of document.querySelectorAll('#gallery button')) b.setAttribute('aria-current', String(b.dataset.id === id));
    if (location.hash !== '#' + id) history.replaceState(null, '', '#' + id);
    addLayer(() => stateView(true));
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

  /** The upload token, asked once where the server wants one and kept in this browser. */
  const TOKEN_KEY = 'infdit-upload-token';
  function authHeaders() {
    const t = state.uploads === 'token' ? $('token').value.trim() : '';
    if (t) localStorage.setItem(TOKEN_KEY, t);
    return t ? { Authorization: `Bearer ${t}` } : {};
  }
  function showUploads(mode) {
    state.uploads = mode;
    $('upload').hidden = mode === 'off';
    $('read-only').hidden = mode !== 'off';
    $('token-row').hidden = mode !== 'token';
    if (mode === 'token' && !$('token').value) $('token').value = localStorage.getItem(TOKEN_KEY) || '';
  }
  /** A refusal for want of the token: say so next to the token field. */
  function tokenRefused(status, msg, text) {
    if (status !== 401 && status !== 403) return false;
    msg.className = 'error'; msg.textContent = text;
    if (state.uploads === 'token') $('token').focus();
    return true;
  }

  async function remove(im) {
    if (!confirm(`Delete ${im.name} and everything generated from it?`)) return;
    const msg = $('upload-msg');
    const r = await fetch(`/api/images/${im.id}`, { method: 'DELETE', headers: authHeaders() });
    const body = await r.json().catch(() => ({ error: `server answered ${r.status}` }));
    if (!r.ok) { if (!tokenRefused(r.status, msg, `Not deleted: ${body.error}`)) { msg.className = 'error'; msg.textContent = `Not deleted: ${body.error}`; } return; }
    msg.className = ''; msg.textContent = `Deleted ${im.name} (${(body.freedBytes / 2 ** 20).toFixed(1)} MB freed)`;
    if (state.id === im.id) { state.id = null; state.st = null; if (state.es) state.es.close(); viewer.world.removeAll(); location.hash = ''; }
    await loadGallery();
  }

  async function loadGallery(openId) {
    const r = await fetch('/api/images');
    const { images, uploads } = await r.json();
    showUploads(uploads);
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
      li.append(b);
      if (uploads !== 'off' && !im.demo) {
        const del = document.createElement('button');
        del.type = 'button'; del.className = 'delete'; del.textContent = '×';
        del.setAttribute('aria-label', `Delete ${im.name}`); del.title = 'Delete this image and what was generated from it';
        del.addEventListener('click', () => remove(im));
        li.append(del);
      }
      ul.append(li);
    }
    const target = openId || location.hash.slice(1) || (images[0] && images[0].id);
    if (target && images.some(i => i.id === target)) open(target);
  }

  async function upload(file) {
    const msg = $('upload-msg');
    msg.className = ''; msg.textContent = `Uploading ${file.name}…`;
    const fd = new FormData(); fd.append('image', file, file.name);
    try {
      const r = await fetch('/api/images', { method: 'POST', body: fd, headers: authHeaders() });
      const body = await r.json().catch(() => ({ error: `server answered ${r.status}` }));
      if (!r.ok) { if (!tokenRefused(r.status, msg, `Not uploaded: ${body.error}`)) { msg.className = 'error'; msg.textContent = `Not uploaded: ${body.error}`; } return; }
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
