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
    id: null, st: null, done: new Set(), gen: 0, layers: [], compareLayer: null, swapping: false,
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
        if (!state.done.has(r * st.blocks.cols + c)) return false;
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
    const total = st.blocks.total, done = state.done.size;
    const pct = total ? Math.floor((1000 * done) / total) / 10 : 100;
    const eta = st.etaSeconds != null && done < total ? ` · about ${formatSecs(st.etaSeconds)} left` : '';
    showProgress(done >= total ? `Detail complete: 100% (${total} blocks)` : `Generating detail: ${pct}% (${done}/${total} blocks)${eta}`);
    $('progress').dataset.percent = String(pct);
    drawBlocks();
  }
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
    cv.width = cols; cv.height = rows;
    const ctx = cv.getContext('2d');
    ctx.clearRect(0, 0, cols, rows);
    if (!$('show-pending').checked) return;
    ctx.fillStyle = 'rgba(24, 24, 27, 0.35)';
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) if (!state.done.has(r * cols + c)) ctx.fillRect(c, r, 1, 1);
  }

  function drawBlocks() {
    drawOverlay();
    const st = state.st, cv = $('blocks'), ctx = cv.getContext('2d');
    const { rows, cols } = st.blocks;
    const cell = Math.max(1, Math.min(160 / cols, 120 / rows));
    cv.width = Math.ceil(cols * cell); cv.height = Math.ceil(rows * cell);
    ctx.fillStyle = '#3f3f46'; ctx.fillRect(0, 0, cv.width, cv.height);
    ctx.fillStyle = '#22c55e';
    for (const k of state.done) ctx.fillRect((k % cols) * cell, Math.floor(k / cols) * cell, Math.ceil(cell), Math.ceil(cell));
    cv.setAttribute('aria-label', `Generated blocks: ${state.done.size} of ${st.blocks.total}`);
  }

  async function pollStatus() {
    if (!state.id) return;
    try {
      const r = await fetch(`/api/images/${state.id}`);
      if (r.ok) {
        const st = await r.json();
        if (st.id === state.id) {
          state.st.etaSeconds = st.etaSeconds;
          for (const k of st.blocks.doneList) state.done.add(k);
          renderProgress(); scheduleRefresh();
        }
      }
    } catch { /* the next poll or event will catch up */ }
    clearTimeout(state.pollTimer);
    if (state.done.size < state.st.blocks.total) state.pollTimer = setTimeout(pollStatus, 3000);
  }

  // ----------------------------------------------------------------- open an image

  async function open(id) {
    const r = await fetch(`/api/images/${encodeURIComponent(id)}`);
    if (!r.ok) { showProgress(`Image ${id} not found`); return; }
    const st = await r.json();
    if (state.es) state.es.close();
    clearTimeout(state.pollTimer);
    Object.assign(state, { id, st, done: new Set(st.blocks.doneList), layers: [], compareLayer: null, swapping: false });
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
      state.done.add(d.r * st.blocks.cols + d.c);
      renderProgress(); scheduleRefresh();
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
