/* Accessibility basics of the page, run inside it by test_web_browser.py (as a function body):
   controls without a name, positive tabindex, the expected tab order, and text contrast (WCAG 2
   relative luminance) of every visible text against its composited background. */
const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
const desc = (e) => e.id ? '#' + e.id : e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ')[0] : '') +
  (e.textContent ? '"' + e.textContent.trim().slice(0, 24) + '"' : '');

/* every control has a name from a label, aria-label(ledby), or its own text */
const unlabelled = [];
for (const e of document.querySelectorAll('input, select, textarea, button')) {
  if (e.type === 'hidden') continue;
  const lb = e.getAttribute('aria-labelledby');
  const named = (e.getAttribute('aria-label') || '').trim() ||
    (lb && lb.split(/\s+/).map((id) => (document.getElementById(id) || {}).textContent || '').join('').trim()) ||
    (e.labels && [...e.labels].map((l) => l.textContent).join('').trim()) ||
    (e.tagName === 'BUTTON' && e.textContent.trim());
  if (!named) unlabelled.push(desc(e));
}
for (const e of document.querySelectorAll('img, canvas[role="img"]'))
  if (!(e.getAttribute('alt') || e.getAttribute('aria-label') || '').trim()) unlabelled.push(desc(e));

const positive = [...document.querySelectorAll('[tabindex]')].filter((e) => e.tabIndex > 0).map(desc);

/* the order Tab should follow: DOM order of focusable, rendered controls; a radio group is one stop
   (its checked radio); a scroll container (overflow auto/scroll) with nothing focusable inside is a
   stop too, as Chromium makes it one even when nothing overflows */
const focusable = 'a[href], button, input, select, textarea, summary, [tabindex]';
const order = [];
const seenRadio = new Set();
for (const e of document.querySelectorAll('body *')) {
  if (!visible(e) || e.closest('[inert]')) continue;
  let stop = e.matches(focusable) && !e.disabled && e.tabIndex >= 0;
  if (stop && e.type === 'radio') {
    if (!seenRadio.has(e.name)) {
      seenRadio.add(e.name);
      const group = [...document.getElementsByName(e.name)];
      order.push(group.find((r) => r.checked) || group[0]);
    }
    continue;
  }
  if (!stop) {
    const cs = getComputedStyle(e);
    const scrolls = /(auto|scroll)/.test(cs.overflowY + cs.overflowX) && !e.matches('textarea, select');
    stop = scrolls && !e.querySelector(focusable);
  }
  if (stop) order.push(e);
}
let n = 0;
for (const e of order) if (!e.dataset.a11y) e.dataset.a11y = 'f' + (n++);
const expected = order.map((e) => e.dataset.a11y);

/* contrast */
const parse = (c) => {
  const m = /rgba?\(([^)]+)\)/.exec(c);
  if (!m) return null;
  const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
  return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
};
const over = (t, b) => {
  const a = t.a + b.a * (1 - t.a);
  if (!a) return { r: 0, g: 0, b: 0, a: 0 };
  const mix = (x, y) => (x * t.a + y * b.a * (1 - t.a)) / a;
  return { r: mix(t.r, b.r), g: mix(t.g, b.g), b: mix(t.b, b.b), a };
};
const lum = (c) => {
  const f = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
};
const background = (e) => {
  const chain = [];
  for (let x = e; x; x = x.parentElement) chain.push(x);
  let bg = { r: 255, g: 255, b: 255, a: 1 };
  for (const x of chain.reverse()) {
    const c = parse(getComputedStyle(x).backgroundColor);
    if (c && c.a > 0) bg = over(c, bg);
  }
  return bg;
};
const opacity = (e) => {
  let o = 1;
  for (let x = e; x; x = x.parentElement) o *= Number(getComputedStyle(x).opacity);
  return o;
};
const low = [];
let checked = 0, lowest = 99, lowestWhat = '';
const check = (e, color, what) => {
  const bg = background(e);
  const fg0 = parse(color);
  if (!fg0) return;
  const fg = over({ r: fg0.r, g: fg0.g, b: fg0.b, a: fg0.a * opacity(e) }, bg);
  const l1 = lum(fg), l2 = lum(bg);
  const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
  checked++;
  if (ratio < lowest) { lowest = ratio; lowestWhat = desc(e) + (what ? ' ' + what : ''); }
  if (ratio < 4.5) low.push(desc(e) + (what ? ' ' + what : '') + ': ' + ratio.toFixed(2) + ':1 (' + color + ' on ' +
    'rgb(' + [bg.r, bg.g, bg.b].map(Math.round).join(', ') + '))');
};
for (const e of document.querySelectorAll('body *')) {
  if (!visible(e) || e.closest('[disabled], [aria-hidden="true"], option, script, style')) continue;
  if (e.getBoundingClientRect().right < 0) continue; /* the skip link waits off-screen until focused */
  const ownText = [...e.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim());
  if (ownText || e.matches('input:not([type=radio]):not([type=range]):not([type=file]), select, textarea')) check(e, getComputedStyle(e).color, '');
  if (e.matches('input[placeholder], textarea[placeholder]') && !e.value && e.placeholder)
    check(e, getComputedStyle(e, '::placeholder').color, '::placeholder');
}
return { unlabelled, positive, expected, low, checked, lowest: Math.round(lowest * 100) / 100, lowestWhat };
