/* sdxl serve's page: a form that builds a /v1 job request, its plan from /v1/validate, a queue fed
   by /v1/jobs and server-sent events, and a gallery of the journal. Plain JS, no dependencies; it
   talks only to this server. The last settings live in localStorage; an API key only in memory. */
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const STORE = 'sdxl.settings.v1';
  const PAGE = 12;
  const MAX_STREAMS = 4;
  const PRE_KINDS = [['none', 'None (the image is the map)'], ['canny', 'Canny edges'], ['invert', 'Invert'],
    ['grayscale', 'Grayscale'], ['threshold', 'Threshold (scribble)'], ['tile', 'Tile (down and up)'], ['blur', 'Gaussian blur']];
  const S = {
    key: null, keyWait: null, samplers: [], schedules: [], aliases: [], models: [], vaes: [], loras: [], controlnets: [],
    loraUnits: [], cnUnits: [], uid: 0, init: null, mask: null, maskDirty: false, lastSeed: null,
    jobs: new Map(), polling: false, page: 0, matched: 0, history: [], urls: [], planSeq: 0, tokSeq: 0, plan: null,
  };

  /* ---- small helpers ---- */
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
      else if (k in e && typeof v !== 'string') e[k] = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of kids) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function debounce(fn, ms) {
    let t = 0;
    return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  function fmtBytes(n) {
    if (!(n > 0)) return '—';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(n < 10 && i ? 1 : 0) + ' ' + u[i];
  }
  function fmtSecs(s) {
    if (!(s >= 0) || !isFinite(s)) return '—';
    if (s < 0.1) return '< 0.1 s';
    if (s < 10) return s.toFixed(1) + ' s';
    if (s < 90) return Math.round(s) + ' s';
    return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
  }
  function num(id) {
    const v = $(id).value.trim();
    return v === '' || !isFinite(Number(v)) ? undefined : Number(v);
  }
  function say(msg, bad) {
    const m = $('form-msg');
    m.textContent = msg || '';
    m.classList.toggle('bad', !!bad);
  }
  function fileToDataURL(file) {
    return new Promise((res, rej) => {
      const r = new FileReader();
      r.onload = () => res(r.result);
      r.onerror = () => rej(r.error);
      r.readAsDataURL(file);
    });
  }
  function loadImage(src) {
    return new Promise((res, rej) => {
      const i = new Image();
      i.onload = () => res(i);
      i.onerror = () => rej(new Error('not an image the browser can show'));
      i.src = src;
    });
  }

  /* ---- API: same origin; a bearer key when the server asks for one ---- */
  function askKey() {
    if (S.keyWait) return S.keyWait;
    S.keyWait = new Promise((res) => {
      const d = $('key-dialog');
      const f = $('key-form');
      const done = (ev) => {
        ev.preventDefault();
        const k = $('key-input').value.trim();
        if (!k) return;
        S.key = k;
        $('key-input').value = '';
        f.removeEventListener('submit', done);
        d.close();
        S.keyWait = null;
        res();
      };
      f.addEventListener('submit', done);
      if (!d.open) d.showModal();
      $('key-input').focus();
    });
    return S.keyWait;
  }
  async function api(path, o = {}) {
    for (;;) {
      const headers = Object.assign({}, o.headers || {});
      if (S.key) headers.Authorization = 'Bearer ' + S.key;
      let body = o.body;
      if (o.json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(o.json); }
      const r = await fetch(path, { method: o.method || 'GET', headers, body, signal: o.signal, cache: 'no-store' });
      if (r.status !== 401) return r;
      S.key = null;
      await askKey();
    }
  }
  async function getJSON(path, o) {
    const r = await api(path, o);
    let j = null;
    try { j = await r.json(); } catch (e) { j = null; }
    if (!r.ok) {
      const msg = j && j.error ? j.error.message : j && j.detail ? String(j.detail) : 'HTTP ' + r.status;
      const err = new Error(msg);
      err.status = r.status;
      err.body = j;
      throw err;
    }
    return j;
  }

  /* ---- settings: localStorage keeps the last form (not images, not the key) ---- */
  const FIELDS = ['prompt', 'negative_prompt', 'width', 'height', 'steps', 'cfg_scale', 'batch_count', 'sampler', 'schedule',
    'seed', 'model', 'refiner', 'refiner_switch', 'vae', 'strength', 'mask_blur'];
  function saveSettings() {
    const s = { mode: mode() };
    for (const f of FIELDS) s[f] = $(f).value;
    s.loras = S.loraUnits.map((u) => ({ name: u.name, weight: u.weight }));
    s.controls = S.cnUnits.map((u) => ({ model: u.model, kind: u.kind, args: u.args, scale: u.scale, start: u.start, end: u.end }));
    try { localStorage.setItem(STORE, JSON.stringify(s)); } catch (e) { /* storage full or disabled: nothing to keep */ }
  }
  function restoreSettings() {
    let s = null;
    try { s = JSON.parse(localStorage.getItem(STORE) || 'null'); } catch (e) { s = null; }
    if (!s || typeof s !== 'object') return;
    for (const f of FIELDS) if (typeof s[f] === 'string') setValue(f, s[f]);
    if (Array.isArray(s.loras)) S.loraUnits = s.loras.filter((u) => u && typeof u.name === 'string').map((u) => ({ id: ++S.uid, name: u.name, weight: String(u.weight ?? '1') }));
    if (Array.isArray(s.controls)) S.cnUnits = s.controls.filter((u) => u && typeof u === 'object').map((u) => newCnUnit(u));
    if (s.mode) setMode(s.mode);
    syncPreset();
  }
  function setValue(id, v) {
    const e = $(id);
    if (e.tagName === 'SELECT' && v !== '' && ![...e.options].some((o) => o.value === v)) e.append(el('option', { value: v, text: v }));
    e.value = v;
  }

  /* ---- lists from the server ---- */
  function fillSelect(sel, items, keep) {
    const cur = sel.value;
    while (sel.options.length > keep) sel.remove(keep);
    for (const [v, t] of items) sel.append(el('option', { value: v, text: t }));
    if ([...sel.options].some((o) => o.value === cur)) sel.value = cur;
  }
  async function loadLists() {
    const [sch, mod, lor, cn] = await Promise.all([getJSON('/v1/schedulers'), getJSON('/v1/models'),
      getJSON('/v1/loras'), getJSON('/v1/controlnets')]);
    S.samplers = (sch.samplers || []).filter((s) => s.traits && s.traits.implemented);
    S.schedules = sch.schedules || [];
    S.aliases = sch.aliases || [];
    fillSelect($('sampler'), S.samplers.map((s) => [s.name, s.a1111 || s.name]), 0);
    fillSelect($('schedule'), [['Automatic', 'Automatic']].concat(S.schedules.map((s) => [s, s])), 0);
    if (!$('sampler').value && S.samplers.length) $('sampler').value = S.samplers[0].name;
    const names = (a) => (a || []).map((m) => (typeof m === 'string' ? m : m.name)).filter(Boolean);
    S.models = names(mod.models);
    S.vaes = names(mod.vaes).concat(names(mod.vaes_in_model_roots));
    S.loras = names(lor.loras);
    S.controlnets = names(cn.controlnets);
    fillSelect($('model'), S.models.map((m) => [m, m]), 1);
    fillSelect($('refiner'), S.models.map((m) => [m, m]), 1);
    fillSelect($('vae'), S.vaes.map((m) => [m, m]), 1);
    $('lora-add').disabled = false;
    $('cn-add').disabled = false;
  }
  function samplerHint() {
    const s = S.samplers.find((x) => x.name === $('sampler').value);
    const h = $('sampler-hint');
    if (!s) { h.textContent = ''; return; }
    const t = s.traits;
    const parts = [t.kind, t.evals_per_step + (t.evals_per_step === 1 ? ' model call' : ' model calls') + ' per step',
      'order ' + t.order, 'default schedule ' + t.default_schedule, 'about ' + t.steps.base + ' steps'];
    if (!t.img2img) parts.push('not for img2img');
    h.textContent = parts.join(' · ') + (t.note ? '. ' + t.note : '');
  }
  function matchSampler(name) {
    if (!name) return null;
    const n = String(name).toLowerCase();
    for (const s of S.samplers)
      if ([s.name, s.a1111, s.comfyui, s.diffusers].some((x) => x && String(x).toLowerCase() === n)) return { sampler: s.name };
    const a = S.aliases.find((x) => String(x.name).toLowerCase() === n);
    if (a) return { sampler: a.sampler, schedule: a.schedule || undefined };
    return null;
  }
  function matchSchedule(name) {
    if (!name) return null;
    const n = String(name).toLowerCase().replace(/[\s_-]/g, '');
    if (n === 'automatic' || n === 'auto') return 'Automatic';
    return S.schedules.find((s) => s.toLowerCase().replace(/[\s_-]/g, '') === n) || null;
  }
  function matchModel(list, name) {
    if (!name) return null;
    const stem = String(name).split(/[\\/]/).pop().replace(/\.(safetensors|sft|ckpt)$/i, '').replace(/ \[[0-9a-f]+\]$/i, '');
    return list.find((m) => m === name) || list.find((m) => m.split('/').pop() === stem) || null;
  }

  /* ---- size presets ---- */
  function syncPreset() {
    const v = $('width').value + 'x' + $('height').value;
    $('size-preset').value = [...$('size-preset').options].some((o) => o.value === v) ? v : 'custom';
  }

  /* ---- token counter: A1111 chunks of 75 from /v1/tokenize ---- */
  const updateTokens = debounce(async () => {
    const seq = ++S.tokSeq;
    const body = { prompt: $('prompt').value, negative_prompt: $('negative_prompt').value };
    try {
      const r = await api('/v1/tokenize', { method: 'POST', json: body });
      const j = await r.json();
      if (seq !== S.tokSeq) return;
      for (const k of ['prompt', 'negative_prompt']) {
        const out = $(k + '-tokens');
        if (!r.ok) {
          out.textContent = j.error && j.error.field === k ? j.error.message : '';
          continue;
        }
        const t = j[k];
        if (!t) { out.textContent = ''; continue; }
        const cap = 75 * Math.max(1, t.chunks.length);
        let s = t.n_tokens + '/' + cap + ' tokens';
        if (t.chunks.length > 1) s += ' in ' + t.chunks.length + ' chunks (' + t.chunks.join(' + ') + ')';
        if (t.loras.length) s += ' · LoRA: ' + t.loras.map((l) => l.name + ' ' + l.unet_weight).join(', ');
        out.textContent = s;
      }
    } catch (e) { /* the counter is advisory: the plan reports real problems */ }
  }, 250);

  /* ---- init image and mask ---- */
  function mode() { return document.querySelector('input[name="mode"]:checked').value; }
  function setMode(m) {
    const r = $('mode-' + m);
    if (r) r.checked = true;
    const img = m !== 'txt2img';
    $('img-section').hidden = !img;
    for (const e of document.querySelectorAll('.inpaint-only')) e.hidden = m !== 'inpaint';
    drawInit();
  }
  async function setInit(src) {
    const img = await loadImage(src);
    S.init = { src, img, w: img.naturalWidth, h: img.naturalHeight };
    const m = document.createElement('canvas');
    m.width = S.init.w;
    m.height = S.init.h;
    const g = m.getContext('2d');
    g.fillStyle = '#000';
    g.fillRect(0, 0, m.width, m.height);
    S.mask = m;
    S.maskDirty = false;
    $('width').value = String(Math.max(64, Math.round(S.init.w / 8) * 8));
    $('height').value = String(Math.max(64, Math.round(S.init.h / 8) * 8));
    syncPreset();
    if (mode() === 'txt2img') setMode('img2img');
    drawInit();
    changed();
  }
  async function setMask(src) {
    if (!S.init) throw new Error('load the initial image first');
    const img = await loadImage(src);
    S.mask.getContext('2d').drawImage(img, 0, 0, S.mask.width, S.mask.height);
    S.maskDirty = true;
    drawInit();
    changed();
  }
  function drawInit() {
    const c = $('init-canvas');
    $('init-empty').hidden = !!S.init;
    c.classList.toggle('empty', !S.init);
    if (!S.init) return;
    if (c.width !== S.init.w || c.height !== S.init.h) { c.width = S.init.w; c.height = S.init.h; }
    const g = c.getContext('2d');
    g.globalAlpha = 1;
    g.globalCompositeOperation = 'source-over';
    g.drawImage(S.init.img, 0, 0);
    if (mode() === 'inpaint' && S.mask) {
      const o = document.createElement('canvas');
      o.width = c.width;
      o.height = c.height;
      const og = o.getContext('2d');
      og.drawImage(S.mask, 0, 0);
      const d = og.getImageData(0, 0, o.width, o.height);
      for (let i = 0; i < d.data.length; i += 4) {
        const v = d.data[i];
        d.data[i] = 230; d.data[i + 1] = 40; d.data[i + 2] = 90; d.data[i + 3] = Math.round(v * 0.55);
      }
      og.putImageData(d, 0, 0);
      g.drawImage(o, 0, 0);
    }
  }
  function paintAt(ev) {
    if (mode() !== 'inpaint' || !S.mask) return;
    const c = $('init-canvas');
    const rect = c.getBoundingClientRect();
    const sx = c.width / rect.width;
    const x = (ev.clientX - rect.left) * sx;
    const y = (ev.clientY - rect.top) * (c.height / rect.height);
    const g = S.mask.getContext('2d');
    g.fillStyle = '#fff';
    g.beginPath();
    g.arc(x, y, (Number($('brush').value) / 2) * sx, 0, Math.PI * 2);
    g.fill();
    S.maskDirty = true;
    drawInit();
  }
  function bindCanvas() {
    const c = $('init-canvas');
    let down = false;
    c.addEventListener('pointerdown', (e) => { if (mode() !== 'inpaint') return; down = true; c.setPointerCapture(e.pointerId); paintAt(e); });
    c.addEventListener('pointermove', (e) => { if (down) paintAt(e); });
    const up = () => { if (down) { down = false; changed(); } };
    c.addEventListener('pointerup', up);
    c.addEventListener('pointercancel', up);
    $('mask-clear').addEventListener('click', () => {
      if (!S.mask) return;
      const g = S.mask.getContext('2d');
      g.fillStyle = '#000';
      g.fillRect(0, 0, S.mask.width, S.mask.height);
      S.maskDirty = false;
      drawInit();
      changed();
    });
    $('mask-invert').addEventListener('click', () => {
      if (!S.mask) return;
      const g = S.mask.getContext('2d');
      const d = g.getImageData(0, 0, S.mask.width, S.mask.height);
      for (let i = 0; i < d.data.length; i += 4) { d.data[i] = d.data[i + 1] = d.data[i + 2] = 255 - d.data[i]; d.data[i + 3] = 255; }
      g.putImageData(d, 0, 0);
      S.maskDirty = true;
      drawInit();
      changed();
    });
  }

  /* ---- LoRA units ---- */
  function renderLoras() {
    const ul = $('lora-list');
    ul.replaceChildren();
    S.loraUnits.forEach((u, i) => {
      const nameId = 'lora' + u.id + '-name';
      const wId = 'lora' + u.id + '-weight';
      const sel = el('select', { id: nameId, 'data-field': 'loras[' + i + '].name', 'aria-describedby': nameId + '-err' });
      const names = S.loras.includes(u.name) || !u.name ? S.loras : [u.name].concat(S.loras);
      for (const n of names) sel.append(el('option', { value: n, text: n }));
      if (!u.name && names.length) u.name = names[0];
      sel.value = u.name;
      sel.addEventListener('change', () => { u.name = sel.value; changed(); });
      const w = el('input', { type: 'number', id: wId, min: '-2', max: '2', step: '0.05', value: u.weight, 'data-field': 'loras[' + i + '].weight', 'aria-describedby': wId + '-err' });
      w.addEventListener('input', () => { u.weight = w.value; changed(); });
      const rm = el('button', { type: 'button', text: 'Remove', 'aria-label': 'Remove LoRA ' + (i + 1) });
      rm.addEventListener('click', () => { S.loraUnits.splice(i, 1); renderLoras(); changed(); $('lora-add').focus(); });
      ul.append(el('li', { class: 'unit' },
        el('div', { class: 'row' },
          el('div', { class: 'field wide' }, el('label', { for: nameId, text: 'LoRA ' + (i + 1) }), sel, el('p', { class: 'err', id: nameId + '-err' })),
          el('div', { class: 'field' }, el('label', { for: wId, text: 'Weight' }), w, el('p', { class: 'err', id: wId + '-err' }))),
        el('div', { class: 'buttons' }, rm)));
    });
    $('lora-count').textContent = S.loraUnits.length ? '(' + S.loraUnits.length + ')' : '';
  }

  /* ---- ControlNet units ---- */
  function newCnUnit(o) {
    o = o || {};
    return { id: ++S.uid, model: o.model || '', kind: o.kind || 'canny', args: o.args || '', scale: String(o.scale ?? '1'),
      start: String(o.start ?? '0'), end: String(o.end ?? '1'), image: null, previewSeq: 0 };
  }
  function cnSpec(u) { return u.kind === 'none' ? 'none' : u.kind + (u.args.trim() ? ':' + u.args.trim() : ''); }
  const cnPreview = debounce(async (u) => {
    const out = document.getElementById('cn' + u.id + '-pre');
    const msg = document.getElementById('cn' + u.id + '-pre-err');
    if (!out || !u.image) return;
    const seq = ++u.previewSeq;
    try {
      const r = await api('/v1/preprocess', { method: 'POST', json: { image: u.image, preprocess: cnSpec(u), width: num('width') || 0, height: num('height') || 0, max_side: 256 } });
      if (seq !== u.previewSeq) return;
      if (!r.ok) {
        const j = await r.json().catch(() => null);
        msg.textContent = j && j.error ? j.error.message : 'preview failed (HTTP ' + r.status + ')';
        return;
      }
      const b = await r.blob();
      if (out.dataset.url) URL.revokeObjectURL(out.dataset.url);
      out.dataset.url = URL.createObjectURL(b);
      out.src = out.dataset.url;
      out.hidden = false;
      msg.textContent = '';
    } catch (e) { msg.textContent = 'preview failed: ' + e.message; }
  }, 300);
  function renderCn() {
    const ul = $('cn-list');
    ul.replaceChildren();
    S.cnUnits.forEach((u, i) => {
      const p = 'cn' + u.id;
      const f = (name) => 'controls[' + i + '].' + name;
      const field = (id, label, input, wide) => el('div', { class: 'field' + (wide ? ' wide' : '') },
        el('label', { for: id, text: label }), input, el('p', { class: 'err', id: id + '-err' }));
      const model = el('select', { id: p + '-model', 'data-field': f('model'), 'aria-describedby': p + '-model-err' });
      const names = !u.model || S.controlnets.includes(u.model) ? S.controlnets : [u.model].concat(S.controlnets);
      for (const n of names) model.append(el('option', { value: n, text: n }));
      if (!u.model && names.length) u.model = names[0];
      model.value = u.model;
      model.addEventListener('change', () => { u.model = model.value; changed(); });
      const kind = el('select', { id: p + '-kind', 'data-field': f('preprocess'), 'aria-describedby': p + '-kind-err' });
      for (const [v, t] of PRE_KINDS) kind.append(el('option', { value: v, text: t }));
      kind.value = u.kind;
      const args = el('input', { type: 'text', id: p + '-args', value: u.args, placeholder: 'e.g. 100:200', 'aria-describedby': p + '-args-err' });
      kind.addEventListener('change', () => { u.kind = kind.value; changed(); cnPreview(u); });
      args.addEventListener('input', () => { u.args = args.value; changed(); cnPreview(u); });
      const file = el('input', { type: 'file', id: p + '-image', accept: 'image/png,image/jpeg,image/webp', 'data-field': f('image'), 'aria-describedby': p + '-image-err' });
      const src = el('img', { id: p + '-src', alt: 'Control image ' + (i + 1), hidden: !u.image });
      if (u.image) src.src = u.image;
      const pre = el('img', { id: p + '-pre', alt: 'Preprocessed control image ' + (i + 1) + ' (preview)', hidden: true });
      const setImage = async (f2) => {
        u.image = await fileToDataURL(f2);
        src.src = u.image;
        src.hidden = false;
        changed();
        cnPreview(u);
      };
      file.addEventListener('change', () => { if (file.files[0]) setImage(file.files[0]).catch((e) => say(e.message, true)); });
      const scale = el('input', { type: 'number', id: p + '-scale', min: '0', max: '2', step: '0.05', value: u.scale, 'data-field': f('scale'), 'aria-describedby': p + '-scale-err' });
      const start = el('input', { type: 'number', id: p + '-start', min: '0', max: '1', step: '0.05', value: u.start, 'data-field': f('guidance_start'), 'aria-describedby': p + '-start-err' });
      const end = el('input', { type: 'number', id: p + '-end', min: '0', max: '1', step: '0.05', value: u.end, 'data-field': f('guidance_end'), 'aria-describedby': p + '-end-err' });
      scale.addEventListener('input', () => { u.scale = scale.value; changed(); });
      start.addEventListener('input', () => { u.start = start.value; changed(); });
      end.addEventListener('input', () => { u.end = end.value; changed(); });
      const rm = el('button', { type: 'button', text: 'Remove unit', 'aria-label': 'Remove ControlNet unit ' + (i + 1) });
      rm.addEventListener('click', () => { S.cnUnits.splice(i, 1); renderCn(); changed(); $('cn-add').focus(); });
      const li = el('li', { class: 'unit', 'data-drop': 'cn' },
        el('p', { text: 'Unit ' + (i + 1) }),
        el('div', { class: 'row' }, field(p + '-model', 'ControlNet model', model, true)),
        el('div', { class: 'row' }, field(p + '-kind', 'Preprocessor', kind, true), field(p + '-args', 'Preprocessor options', args)),
        field(p + '-image', 'Control image (or drop one on this unit)', file, true),
        el('div', { class: 'preview' }, src, pre),
        el('p', { class: 'err', id: p + '-pre-err' }),
        el('div', { class: 'row' }, field(p + '-scale', 'Scale', scale), field(p + '-start', 'Start', start), field(p + '-end', 'End', end)),
        el('div', { class: 'buttons' }, rm));
      li.sdxlDrop = setImage;
      ul.append(li);
      if (u.image) cnPreview(u);
    });
    $('cn-count').textContent = S.cnUnits.length ? '(' + S.cnUnits.length + ')' : '';
  }

  /* ---- the request ---- */
  function buildRequest() {
    const q = { prompt: $('prompt').value };
    const neg = $('negative_prompt').value;
    if (neg) q.negative_prompt = neg;
    for (const k of ['width', 'height', 'steps', 'cfg_scale', 'seed', 'batch_count']) {
      const v = num(k);
      if (v !== undefined) q[k] = v;
    }
    if ($('sampler').value) q.sampler = $('sampler').value;
    if ($('schedule').value && $('schedule').value !== 'Automatic') q.schedule = $('schedule').value;
    if ($('model').value) q.model = $('model').value;
    if ($('refiner').value) {
      q.refiner = $('refiner').value;
      const rs = num('refiner_switch');
      if (rs !== undefined) q.refiner_switch = rs;
    }
    if ($('vae').value) q.vae = $('vae').value;
    if (S.loraUnits.length) q.loras = S.loraUnits.map((u) => ({ name: u.name, weight: u.weight === '' ? 1 : Number(u.weight) }));
    const m = mode();
    if (m !== 'txt2img' && S.init) {
      q.init_image = S.init.src;
      const st = num('strength');
      if (st !== undefined) q.strength = st;
      if (m === 'inpaint' && S.mask && S.maskDirty) {
        q.mask = S.mask.toDataURL('image/png');
        const mb = num('mask_blur');
        if (mb !== undefined) q.mask_blur = mb;
      }
    }
    if (S.cnUnits.length) {
      q.controls = S.cnUnits.map((u) => {
        const c = { model: u.model, preprocess: cnSpec(u) };
        if (u.image) c.image = u.image;
        for (const [k, v] of [['scale', u.scale], ['guidance_start', u.start], ['guidance_end', u.end]])
          if (v !== '' && isFinite(Number(v))) c[k] = Number(v);
        return c;
      });
    }
    return q;
  }

  /* ---- plan before run: /v1/validate as fields change ---- */
  function clearIssues() {
    for (const e of document.querySelectorAll('[aria-invalid="true"]')) e.removeAttribute('aria-invalid');
    for (const e of document.querySelectorAll('#gen .err')) e.textContent = '';
    $('plan-issues').replaceChildren();
  }
  function fieldFor(path) {
    let p = String(path || '');
    const m = /^(init_images\[0\]|init_image)$/.exec(p);
    if (m) p = 'init_image';
    while (p) {
      const e = document.querySelector('[data-field="' + CSS.escape(p) + '"]');
      if (e) return e;
      const cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
      if (cut <= 0) break;
      p = p.slice(0, cut);
      const e2 = document.querySelector('[data-field^="' + CSS.escape(p) + '"]');
      if (e2) return e2;
    }
    return null;
  }
  function showIssues(issues, warnings) {
    clearIssues();
    const list = $('plan-issues');
    for (const is of issues || []) {
      const f = fieldFor(is.field);
      if (f) {
        f.setAttribute('aria-invalid', 'true');
        const out = document.getElementById(f.id + '-err') || document.getElementById((f.dataset.field || '') + '-err');
        if (out) out.textContent = (out.textContent ? out.textContent + ' ' : '') + is.message;
        const det = f.closest('details');
        if (det) det.open = true;
      }
      list.append(el('li', { text: (is.field ? is.field + ': ' : '') + is.message.replace(new RegExp('^' + (is.field || '').replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + ': '), '') }));
    }
    for (const w of warnings || []) list.append(el('li', { class: 'warn', text: 'Note: ' + w }));
  }
  /* seconds for a plan, from the median cost of the last finished jobs: UNet seconds per call per
     image pixel (a merged batch shares its calls), plus text, encode, decode and write times */
  function estimate(plan) {
    const refs = S.history.filter((j) => j.state === 'done' && j.metrics && j.metrics.unet_calls > 0 && j.metrics.base_s > 0 && j.width > 0).slice(0, 5);
    if (!refs.length) return null;
    const med = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
    const perPx = med(refs.map((j) => j.metrics.base_s / j.metrics.unet_calls /
      (j.width * j.height * Math.max(1, j.metrics.sub_batch || 1) * Math.max(1, j.metrics.merged_jobs || 1))));
    const perImage = med(refs.map((j) => (j.metrics.decode_s + j.metrics.write_s) / Math.max(1, j.n_images)));
    const fixed = med(refs.map((j) => j.metrics.text_s + j.metrics.encode_s));
    const s = S.samplers.find((x) => x.name === plan.sampler);
    const evals = s ? s.traits.evals_per_step : 1;
    const steps = Math.max(0, plan.steps - (plan.img2img_start_step || 0));
    const calls = steps * evals * Math.max(1, plan.n_sub_batches);
    return calls * perPx * plan.width * plan.height * Math.max(1, plan.sub_batch) + perImage * plan.n_images + fixed;
  }
  function renderPlan(v) {
    const dl = $('plan');
    dl.replaceChildren();
    const row = (k, val) => dl.append(el('dt', { text: k }), el('dd', { text: val }));
    if (!v.valid || !v.plan) { row('Status', 'not runnable: see below'); return; }
    const p = v.plan;
    const sm = S.samplers.find((x) => x.name === p.sampler);
    const sched = p.schedule === 'default' && sm ? sm.traits.default_schedule + ' (the sampler\'s default)' : p.schedule;
    row('Sampler', (sm ? sm.a1111 || sm.name : p.sampler) + ' · schedule ' + sched);
    row('Images', p.n_images + ' of ' + p.width + ' × ' + p.height);
    row('Memory', fmtBytes(p.memory_bytes) + ' estimated peak of ' + fmtBytes(p.memory_available) + ' available');
    row('Sub-batches', p.n_sub_batches + ' × up to ' + p.sub_batch + (p.sub_batch === 1 ? ' image' : ' images'));
    row('Refiner', p.refiner ? 'switches at step ' + p.refiner_switch_step + ' of ' + p.steps : 'none');
    if (p.img2img_start_step) row('Image to image', 'starts at step ' + p.img2img_start_step + ' of ' + p.steps);
    if (p.loras && p.loras.length) row('LoRA', p.loras.map((l) => l.split('/').pop()).join(', '));
    const t = estimate(p);
    row('Expected time', t === null ? 'known after the first run' : (t < 0.1 ? '' : '≈ ') + fmtSecs(t) + ' (from recent runs)');
  }
  const updatePlan = debounce(async () => {
    const seq = ++S.planSeq;
    try {
      const v = await getJSON('/v1/validate', { method: 'POST', json: buildRequest() });
      if (seq !== S.planSeq) return;
      S.plan = v;
      renderPlan(v);
      showIssues(v.issues, v.warnings);
    } catch (e) {
      if (seq !== S.planSeq) return;
      clearIssues();
      const is = e.body && e.body.error && e.body.error.issues;
      if (is) showIssues(is, []);
      else if (e.body && e.body.error && e.body.error.field) showIssues([{ field: e.body.error.field, message: e.message }], []);
      else $('plan-issues').append(el('li', { text: 'The plan is unavailable: ' + e.message }));
      $('plan').replaceChildren();
    }
  }, 350);
  function changed() { updatePlan(); saveSettings(); }

  /* ---- run: submit, queue places, progress over server-sent events, cancel ---- */
  async function submit() {
    const btn = $('generate');
    const q = buildRequest();
    q.preview_every = Math.max(1, Math.round((q.steps || 30) / 12));
    saveSettings();
    btn.disabled = true;
    say('Submitting…');
    try {
      const r = await api('/v1/jobs', { method: 'POST', json: q });
      const j = await r.json().catch(() => ({}));
      if (r.status === 202) {
        addJob(j.id, q);
        say('Queued job ' + j.id + '.');
        poll();
      } else if (j.error && j.error.issues) {
        showIssues(j.error.issues, []);
        say('The server refused the request: ' + j.error.issues.length + ' problem(s), marked on the fields.', true);
      } else {
        say('The server refused the request: ' + (j.error ? j.error.message : 'HTTP ' + r.status), true);
      }
    } catch (e) {
      say('Cannot reach the server: ' + e.message, true);
    } finally {
      btn.disabled = false;
    }
  }
  function addJob(id, q) {
    const title = (q.prompt || '(empty prompt)').replace(/\s+/g, ' ').slice(0, 80);
    const li = el('li', { class: 'job', 'data-id': id, 'data-state': 'queued' });
    const status = el('p', { class: 'status', text: 'Queued' });
    const bar = el('progress', { max: '1', value: '0', 'aria-label': 'Progress of job ' + id });
    const preview = el('img', { alt: 'Latent preview of job ' + id, hidden: true });
    const cancel = el('button', { type: 'button', text: 'Cancel', 'aria-label': 'Cancel job ' + id + ': ' + title });
    li.append(el('p', { class: 'title', title: q.prompt || '', text: title }), cancel, status, bar, el('div', { class: 'pv' }, preview));
    $('queue').prepend(li);
    $('queue-empty').hidden = true;
    const job = { id, q, li, status, bar, preview, cancel, state: 'queued', streaming: false, ctl: null, lastEvent: 0, steps: q.steps || 0, t0: 0 };
    cancel.addEventListener('click', () => cancelJob(job));
    S.jobs.set(id, job);
    return job;
  }
  async function cancelJob(job) {
    job.cancel.disabled = true;
    job.status.textContent = 'Cancelling…';
    try {
      const j = await getJSON('/v1/jobs/' + encodeURIComponent(job.id), { method: 'DELETE' });
      if (j.job && ['cancelled', 'failed', 'done'].includes(j.job.state) && !job.streaming) finish(job, j.job, null);
    } catch (e) {
      job.status.textContent = 'Cancel failed: ' + e.message;
      job.cancel.disabled = false;
    }
  }
  function setJobState(job, st) {
    job.state = st;
    job.li.dataset.state = st;
  }
  function finish(job, info, err) {
    if (job.final) return;
    job.final = true;
    if (job.ctl) job.ctl.abort();
    const st = info ? info.state : err && err.code === 'cancelled' ? 'cancelled' : 'failed';
    setJobState(job, st);
    job.cancel.disabled = true;
    job.cancel.hidden = true;
    if (st === 'done') {
      job.bar.value = job.bar.max;
      const t = info && info.metrics ? ' in ' + fmtSecs(info.metrics.total_s) : '';
      job.status.textContent = 'Done' + t + '. The image is in the gallery.';
      if (info && info.seeds && info.seeds.length) {
        S.lastSeed = info.seeds[info.seeds.length - 1];
        $('seed-reuse').disabled = false;
        $('seed-reuse').title = 'Use seed ' + S.lastSeed;
      }
    } else {
      const why = (err && err.message) || (info && info.error && info.error.message) || st;
      job.status.textContent = (st === 'cancelled' ? 'Cancelled' : 'Failed') + (why && why !== st ? ': ' + why : '') + '.';
    }
    S.page = 0;
    refreshGallery();
    setTimeout(() => {
      job.li.remove();
      S.jobs.delete(job.id);
      $('queue-empty').hidden = S.jobs.size > 0;
    }, st === 'done' ? 4000 : 8000);
  }
  function onEvent(job, ev, data) {
    let d = null;
    try { d = JSON.parse(data); } catch (e) { return; }
    if (ev === 'progress') {
      setJobState(job, 'running');
      if (!job.t0) job.t0 = performance.now();
      const steps = d.steps || 1;
      /* the bar follows the denoising steps; loading, encoding and decoding show as text */
      if (d.phase === 'base' || d.phase === 'refiner') {
        job.bar.max = steps;
        job.bar.value = Math.min(d.step, steps);
        job.li.dataset.step = String(d.step);
        job.li.dataset.steps = String(steps);
      }
      const img = d.n_images > 1 ? ', image ' + (d.image + 1) + ' of ' + d.n_images : '';
      const eta = d.eta_s >= 0 ? ', about ' + fmtSecs(d.eta_s) + ' left' : '';
      job.status.textContent = d.phase + ': step ' + d.step + ' of ' + steps + img + eta;
      job.li.dataset.phase = d.phase;
    } else if (ev === 'preview' && d.png) {
      job.preview.src = 'data:image/png;base64,' + d.png;
      job.preview.alt = 'Latent preview of job ' + job.id + ' at step ' + d.step;
      job.preview.hidden = false;
    } else if (ev === 'result') {
      finish(job, d.job, null);
    } else if (ev === 'error') {
      finish(job, d.job || null, d);
    } else if (ev === 'state' && d.job) {
      setJobState(job, d.job.state);
    }
  }
  async function stream(job) {
    job.streaming = true;
    job.ctl = new AbortController();
    try {
      const headers = job.lastEvent ? { 'Last-Event-ID': String(job.lastEvent) } : {};
      const r = await api('/v1/jobs/' + encodeURIComponent(job.id) + '/events', { headers, signal: job.ctl.signal });
      if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
      const rd = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await rd.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        let k;
        while ((k = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, k);
          buf = buf.slice(k + 2);
          let ev = 'message', id = 0;
          const data = [];
          for (const line of block.split('\n')) {
            if (!line || line[0] === ':') continue;
            const c = line.indexOf(':');
            const f = c < 0 ? line : line.slice(0, c);
            const v = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (f === 'event') ev = v;
            else if (f === 'data') data.push(v);
            else if (f === 'id') id = Number(v) || 0;
          }
          if (id) job.lastEvent = id;
          if (data.length) onEvent(job, ev, data.join('\n'));
        }
      }
    } catch (e) {
      if (e.name !== 'AbortError') job.status.textContent = 'Progress stream interrupted; following by polling.';
    } finally {
      job.streaming = false;
      job.ctl = null;
    }
  }
  async function poll() {
    if (S.polling) return;
    S.polling = true;
    try {
      while ([...S.jobs.values()].some((j) => !j.final)) {
        let queued = [], running = [];
        try {
          const [a, b] = await Promise.all([getJSON('/v1/jobs?state=queued&limit=10000'), getJSON('/v1/jobs?state=running&limit=100')]);
          queued = a.jobs.slice().sort((x, y) => y.priority - x.priority || x.created - y.created);
          running = b.jobs;
        } catch (e) { await sleep(2000); continue; }
        $('server-status').textContent = 'Connected · ' + queued.length + ' queued, ' + running.length + ' running';
        let streams = [...S.jobs.values()].filter((j) => j.streaming).length;
        for (const job of S.jobs.values()) {
          if (job.final) continue;
          const qi = queued.findIndex((j) => j.id === job.id);
          if (qi >= 0) {
            setJobState(job, 'queued');
            const ahead = qi + running.length;
            job.status.textContent = 'Queued: place ' + (qi + 1) + ' of ' + queued.length + (ahead ? ' (' + ahead + ' job' + (ahead > 1 ? 's' : '') + ' ahead)' : ', next');
            job.li.dataset.place = String(qi + 1);
            continue;
          }
          delete job.li.dataset.place;
          if (job.streaming) continue;
          if (streams < MAX_STREAMS) {
            streams++;
            stream(job);
          } else if (!running.some((j) => j.id === job.id)) {
            getJSON('/v1/jobs/' + encodeURIComponent(job.id)).then((j) => {
              if (['done', 'failed', 'cancelled'].includes(j.job.state)) finish(job, j.job, null);
            }).catch(() => {});
          } else {
            setJobState(job, 'running');
            job.status.textContent = 'Running';
          }
        }
        await sleep(1000);
      }
    } finally {
      S.polling = false;
    }
  }

  /* ---- gallery: done jobs of the journal, newest first, in pages ---- */
  async function pngTexts(buf) {
    const u = new Uint8Array(buf);
    const out = {};
    const sig = [137, 80, 78, 71, 13, 10, 26, 10];
    if (u.length < 8 || sig.some((b, i) => u[i] !== b)) return out;
    const dv = new DataView(buf);
    const latin1 = new TextDecoder('latin1');
    const utf8 = new TextDecoder('utf-8');
    const inflate = async (b) => new Uint8Array(await new Response(new Blob([b]).stream().pipeThrough(new DecompressionStream('deflate'))).arrayBuffer());
    for (let p = 8; p + 12 <= u.length;) {
      const n = dv.getUint32(p);
      const type = String.fromCharCode(u[p + 4], u[p + 5], u[p + 6], u[p + 7]);
      if (p + 12 + n > u.length) break;
      const body = u.subarray(p + 8, p + 8 + n);
      const z = body.indexOf(0);
      try {
        if (type === 'tEXt' && z > 0) out[latin1.decode(body.subarray(0, z))] = latin1.decode(body.subarray(z + 1));
        else if (type === 'zTXt' && z > 0) out[latin1.decode(body.subarray(0, z))] = latin1.decode(await inflate(body.subarray(z + 2)));
        else if (type === 'iTXt' && z > 0) {
          const comp = body[z + 1];
          let q = body.indexOf(0, z + 3);
          q = body.indexOf(0, q + 1);
          const txt = body.subarray(q + 1);
          out[latin1.decode(body.subarray(0, z))] = utf8.decode(comp ? await inflate(txt) : txt);
        } else if (type === 'IEND') break;
      } catch (e) { /* a damaged text chunk: skipped */ }
      p += 12 + n;
    }
    return out;
  }
  function revokeGallery() {
    for (const u of S.urls) URL.revokeObjectURL(u);
    S.urls = [];
  }
  async function serverCounts() {
    const h = await getJSON('/ready').catch((e) => e.body || {});
    if (h.queued !== undefined) $('server-status').textContent = 'Connected · ' + h.queued + ' queued, ' + h.running + ' running';
  }
  const refreshGallery = debounce(async () => {
    serverCounts();
    try {
      const d = await getJSON('/v1/jobs?state=done&limit=' + PAGE + '&offset=' + S.page * PAGE);
      S.matched = d.matched !== undefined ? d.matched : d.jobs.length;
      if (S.page === 0) S.history = d.jobs;
      revokeGallery();
      const ol = $('gallery-list');
      ol.replaceChildren();
      for (const j of d.jobs) for (let i = 0; i < j.images.length; i++) ol.append(card(j, i));
      if (!d.jobs.length) ol.append(el('li', { class: 'muted', text: 'No images yet.' }));
      const pages = Math.max(1, Math.ceil(S.matched / PAGE));
      $('page-info').textContent = 'Page ' + (S.page + 1) + ' of ' + pages;
      $('page-newer').disabled = S.page === 0;
      $('page-older').disabled = S.page + 1 >= pages;
      if (S.plan && S.plan.plan) renderPlan(S.plan);
    } catch (e) {
      $('gallery-list').replaceChildren(el('li', { class: 'err', text: 'The gallery is unavailable: ' + e.message }));
    }
  }, 100);
  function card(j, i) {
    const seed = j.images[i].seed;
    const m = j.metrics || {};
    const img = el('img', { alt: 'Image ' + (i + 1) + ' of job ' + j.id, width: String(j.width), height: String(j.height) });
    const info = el('pre', { text: 'loading…' });
    const stats = el('p', { class: 'stats', text: 'Seed ' + seed + ' · ' + j.width + '×' + j.height + ' · ' + fmtSecs(m.total_s) +
      (m.peak_rss ? ' · peak ' + fmtBytes(m.peak_rss) : '') + (m.merged_jobs > 1 ? ' · batched with ' + (m.merged_jobs - 1) + ' other job(s)' : '') });
    const when = new Date(j.created * 1000);
    const dl = el('a', { class: 'button', text: 'Download PNG', download: 'sdxl_' + j.id + '_' + i + '.png', href: '#', 'aria-disabled': 'true' });
    const toImg = el('button', { type: 'button', text: 'Send to img2img', disabled: true });
    const reuse = el('button', { type: 'button', text: 'Reuse settings', disabled: true });
    const li = el('li', { class: 'card', 'data-job': j.id, 'data-seed': String(seed) },
      img, stats, el('p', { class: 'stats', text: when.toLocaleString() }),
      el('details', {}, el('summary', { text: 'Infotext' }), info),
      el('div', { class: 'buttons' }, toImg, reuse, dl));
    (async () => {
      const r = await api('/v1/jobs/' + encodeURIComponent(j.id) + '/images/' + i);
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const blob = await r.blob();
      const url = URL.createObjectURL(blob);
      S.urls.push(url);
      img.addEventListener('load', () => img.classList.toggle('small', img.naturalWidth < img.clientWidth), { once: true });
      img.src = url;
      dl.href = url;
      dl.removeAttribute('aria-disabled');
      const texts = await pngTexts(await blob.arrayBuffer());
      info.textContent = texts.parameters || '(no infotext in this file)';
      li.dataset.infotext = texts.parameters || '';
      toImg.disabled = false;
      toImg.addEventListener('click', async () => {
        await setInit(await fileToDataURL(blob));
        setMode('img2img');
        $('prompt').focus();
        say('Image of job ' + j.id + ' sent to image to image.');
      });
      reuse.disabled = false;
      reuse.addEventListener('click', () => loadSettingsFrom(texts, blob).then(() => say('Settings of job ' + j.id + ' loaded.')));
    })().catch((e) => { info.textContent = 'The image cannot be read: ' + e.message; });
    return li;
  }

  /* ---- settings from an image's metadata ---- */
  function applyRequest(q) {
    const set = (id, v) => { if (v !== undefined && v !== null && v !== '') setValue(id, String(v)); };
    if (typeof q.prompt === 'string') $('prompt').value = q.prompt;
    $('negative_prompt').value = typeof q.negative_prompt === 'string' ? q.negative_prompt : '';
    set('width', q.width);
    set('height', q.height);
    set('steps', q.steps);
    set('cfg_scale', q.cfg_scale);
    set('seed', q.seed);
    set('strength', q.strength);
    const sm = matchSampler(q.sampler);
    if (sm) {
      $('sampler').value = sm.sampler;
      if (sm.schedule) $('schedule').value = matchSchedule(sm.schedule) || 'Automatic';
    }
    if (q.schedule) $('schedule').value = matchSchedule(q.schedule) || 'Automatic';
    const model = matchModel(S.models, q.model);
    $('model').value = model || '';
    const ref = matchModel(S.models, q.refiner_model || q.refiner);
    $('refiner').value = ref || '';
    if (q.refiner_switch !== undefined) set('refiner_switch', q.refiner_switch);
    if (Array.isArray(q.loras)) {
      S.loraUnits = q.loras.filter((l) => l && l.name).map((l) => ({ id: ++S.uid, name: matchModel(S.loras, l.name) || l.name,
        weight: String(l.unet_weight ?? l.weight ?? 1) }));
      renderLoras();
    }
    syncPreset();
  }
  async function loadSettingsFrom(texts, blob) {
    if (texts.sdxl) {
      try {
        applyRequest(JSON.parse(texts.sdxl));
        updateTokens();
        changed();
        return true;
      } catch (e) { /* not our JSON: fall back to the infotext */ }
    }
    const b64 = await fileToDataURL(blob);
    const j = await getJSON('/sdapi/v1/png-info', { method: 'POST', json: { image: b64 } });
    const p = j.parameters || {};
    if (!j.info) throw new Error('the image carries no generation settings');
    applyRequest({ prompt: p.Prompt, negative_prompt: p['Negative prompt'], steps: p.Steps, cfg_scale: p['CFG scale'], seed: p.Seed,
      width: p['Size-1'], height: p['Size-2'], sampler: p.Sampler, schedule: p['Schedule type'], model: p.Model,
      strength: p['Denoising strength'] });
    updateTokens();
    changed();
    return true;
  }
  async function loadSettingsFile(file) {
    try {
      const texts = await pngTexts(await file.arrayBuffer());
      await loadSettingsFrom(texts, file);
      say('Settings loaded from ' + file.name + '.');
    } catch (e) {
      say('No settings loaded from ' + file.name + ': ' + e.message, true);
    }
  }

  /* ---- drag and drop: on an image area it sets that image, elsewhere it loads settings ---- */
  function bindDrop() {
    let depth = 0;
    const ov = $('drop-overlay');
    const hasFile = (e) => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
    document.addEventListener('dragenter', (e) => { if (!hasFile(e)) return; depth++; if (!e.target.closest || !e.target.closest('[data-drop]')) ov.hidden = false; });
    document.addEventListener('dragleave', () => { if (--depth <= 0) { depth = 0; ov.hidden = true; } });
    document.addEventListener('dragover', (e) => {
      if (!hasFile(e)) return;
      e.preventDefault();
      const zone = e.target.closest && e.target.closest('[data-drop]');
      ov.hidden = !!zone;
      for (const z of document.querySelectorAll('.drop.over')) if (z !== zone) z.classList.remove('over');
      if (zone) zone.classList.add('over');
    });
    document.addEventListener('drop', async (e) => {
      if (!hasFile(e)) return;
      e.preventDefault();
      depth = 0;
      ov.hidden = true;
      for (const z of document.querySelectorAll('.over')) z.classList.remove('over');
      const file = e.dataTransfer.files[0];
      if (!file) return;
      const zone = e.target.closest && e.target.closest('[data-drop]');
      try {
        if (zone && zone.dataset.drop === 'init') {
          if (mode() === 'inpaint' && S.init && e.shiftKey) await setMask(await fileToDataURL(file));
          else await setInit(await fileToDataURL(file));
        } else if (zone && zone.dataset.drop === 'cn' && zone.sdxlDrop) {
          await zone.sdxlDrop(file);
        } else {
          await loadSettingsFile(file);
        }
      } catch (err) {
        say(err.message, true);
      }
    });
  }

  /* ---- wiring ---- */
  function bind() {
    const form = $('gen');
    form.addEventListener('submit', (e) => { e.preventDefault(); submit(); });
    /* Enter in a field does not queue a job (Ctrl+Enter or the button does) */
    form.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.ctrlKey && !e.metaKey && e.target.tagName === 'INPUT' && e.target.type !== 'file') e.preventDefault();
    });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !$('key-dialog').open) {
        e.preventDefault();
        submit();
      }
    });
    for (const id of ['prompt', 'negative_prompt']) $(id).addEventListener('input', () => { updateTokens(); changed(); });
    for (const id of ['width', 'height', 'steps', 'cfg_scale', 'batch_count', 'seed', 'refiner_switch', 'strength', 'mask_blur'])
      $(id).addEventListener('input', () => {
        if (id === 'width' || id === 'height') { syncPreset(); for (const u of S.cnUnits) if (u.image) cnPreview(u); }
        changed();
      });
    for (const id of ['sampler', 'schedule', 'model', 'refiner', 'vae']) $(id).addEventListener('change', () => { if (id === 'sampler') samplerHint(); changed(); });
    $('size-preset').addEventListener('change', () => {
      const v = $('size-preset').value;
      if (v === 'custom') return;
      const [w, h] = v.split('x');
      $('width').value = w;
      $('height').value = h;
      changed();
    });
    for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener('change', () => { setMode(mode()); changed(); });
    $('seed-dice').addEventListener('click', () => { $('seed').value = String(Math.floor(Math.random() * 2147483647)); changed(); });
    $('seed-random').addEventListener('click', () => { $('seed').value = '-1'; changed(); });
    $('seed-reuse').addEventListener('click', () => { if (S.lastSeed !== null) { $('seed').value = String(S.lastSeed); changed(); } });
    $('init-file').addEventListener('change', () => { const f = $('init-file').files[0]; if (f) fileToDataURL(f).then(setInit).catch((e) => say(e.message, true)); });
    $('mask-file').addEventListener('change', () => { const f = $('mask-file').files[0]; if (f) fileToDataURL(f).then(setMask).catch((e) => say(e.message, true)); });
    $('load-file').addEventListener('change', () => { const f = $('load-file').files[0]; if (f) loadSettingsFile(f); $('load-file').value = ''; });
    $('lora-add').addEventListener('click', () => {
      S.loraUnits.push({ id: ++S.uid, name: S.loras[0] || '', weight: '1' });
      renderLoras();
      changed();
      const sels = $('lora-list').querySelectorAll('select');
      if (sels.length) sels[sels.length - 1].focus();
    });
    $('cn-add').addEventListener('click', () => {
      S.cnUnits.push(newCnUnit());
      renderCn();
      changed();
      const sels = $('cn-list').querySelectorAll('li:last-child select');
      if (sels.length) sels[0].focus();
    });
    $('page-newer').addEventListener('click', () => { if (S.page > 0) { S.page--; refreshGallery(); } });
    $('page-older').addEventListener('click', () => { S.page++; refreshGallery(); });
    bindCanvas();
    bindDrop();
  }
  async function start() {
    $('lora-add').disabled = true;
    $('cn-add').disabled = true;
    bind();
    try {
      await loadLists();
      await serverCounts();
    } catch (e) {
      $('server-status').textContent = 'Server unavailable: ' + e.message;
    }
    restoreSettings();
    renderLoras();
    renderCn();
    setMode(mode());
    samplerHint();
    updateTokens();
    updatePlan();
    refreshGallery();
    try {
      const [q, r] = await Promise.all([getJSON('/v1/jobs?state=queued&limit=10000'), getJSON('/v1/jobs?state=running&limit=100')]);
      for (const j of r.jobs.concat(q.jobs)) if (!S.jobs.has(j.id)) addJob(j.id, { prompt: 'Job ' + j.id + ' (' + j.width + '×' + j.height + ')' });
      if (S.jobs.size) poll();
    } catch (e) { /* the queue shows this page's jobs only */ }
    document.body.dataset.ready = '1';
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
