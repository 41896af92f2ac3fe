"""What the page carries besides components: the keyboard and map scripts, and the style sheet."""

# Review actions are sent by this script, never "whatever the server has at position N": each one
# carries the sample id and version read from the card on screen (#card data-sid / data-ver) when
# the key was pressed. Bursts are queued in order; one that arrives for a card that changed is
# refused by the server with a message (not silently dropped, never applied to another sample).
# Keys, the card's own buttons and "Relabel to" take the lean route (POST deft/act, see ui/lean.py), the only
# way a card decision reaches the server: one request at a time, in order, and the answer's HTML is swapped
# into #card, #counter-live and #msg-live here.
KEYBOARD_JS = """
<script>
(() => {
  const G = [];
  const L = [];
  let leanBusy = false;
  const val = (id) => {
    const e = document.querySelector('#' + id + ' textarea, #' + id + ' input');
    return e ? e.value : '';
  };
  const esc = (t) => t.replace(/[&<>"]/g, (ch) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'})[ch]);
  // refill element #id (kept: Gradio's renderer owns it) with the attributes and children of #id in html
  const swap = (id, html) => {
    const el = document.getElementById(id);
    if (!el) return;
    const t = document.createElement('template');
    t.innerHTML = html;
    const n = t.content.querySelector('#' + id);
    if (!n) return;
    el.innerHTML = n.innerHTML;
    for (const a of Array.from(n.attributes)) el.setAttribute(a.name, a.value);
  };
  // the large view of the card's image (z): an overlay, closed by Esc, z, a click, or any review action
  const zoomOpen = () => { const z = document.getElementById('zoom'); return z && !z.hidden ? z : null; };
  const zoomClose = () => {
    const z = document.getElementById('zoom');
    if (z) { z.hidden = true; z.removeAttribute('id'); }
  };
  // an undo that took a batch back (#msg-live .undid-batch): the batch's "Accepted 12 sample(s)" is untrue now
  window.deftUndone = () => {
    const m = document.querySelector('#msg-live .undid-batch');
    if (!m) return;
    m.classList.remove('undid-batch');
    const b = document.getElementById('btn-batch-clear');
    if (b) b.click();
  };
  const say = (msg) => swap('msg-live', '<span id="msg-live"><b class="err">⚠ ' + esc(msg) + '</b></span>');
  const pump = async () => {
    if (leanBusy) return;
    leanBusy = true;
    try {
      while (L.length) {
        const p = L.shift();
        let d = null;
        try {
          const r = await fetch('deft/act', {method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({...p, session: val('session-id'), client: val('client-id'),
                                  name: val('reviewer-name')})});
          const text = await r.text();
          try { d = JSON.parse(text); } catch (_) { d = {error: text.slice(0, 200)}; }
          if (!r.ok) throw new Error(d.error || (r.status + ' ' + r.statusText));
        } catch (err) { if (!p.quiet) say('not saved: ' + (err.message || err)); continue; }
        if (p.op === 'counter') { swap('counter-live', d.counter); continue; }
        swap('card', d.card);
        swap('counter-live', d.counter);
        swap('msg-live', d.msg);
        zoomClose();
        if (p.op === 'undo') window.deftUndone();
      }
    } finally { leanBusy = false; }
  };
  window.deftNav = (op) => { L.push({op: op}); pump(); };
  // The counter ("Reviewed 26 / 59") follows other reviewers too: polled every 3 s while Review is on screen,
  // and when the window gets the focus back; in line with the key presses (never overtakes one).
  const pollCounter = () => {
    const e = document.getElementById('counter-live');
    if (document.hidden || !e || e.offsetParent === null || leanBusy || L.length || !val('session-id')) return;
    L.push({op: 'counter', quiet: true});
    pump();
  };
  setInterval(pollCounter, 3000);
  window.addEventListener('focus', pollCounter);
  document.addEventListener('visibilitychange', pollCounter);
  window.deftAct = (action, label) => {
    const c = document.getElementById('card');
    if (!c || !c.dataset.sid) return;
    L.push({op: 'act', sample_id: c.dataset.sid, version: Number(c.dataset.ver), action: action, label: label || ''});
    pump();
  };
  // The evidence strip follows the card on screen, 300 ms after it last changed: its request never
  // competes with a key press's request and render (it cost ~80 ms of median key latency on card.change).
  let evTimer = null, evKey = null;
  new MutationObserver(() => {
    const c = document.getElementById('card');
    const k = c ? c.dataset.sid + '@' + c.dataset.ver : '';
    if (k === evKey) return;
    evKey = k;
    clearTimeout(evTimer);
    evTimer = setTimeout(() => { const b = document.getElementById('btn-evidence'); if (b) b.click(); }, 300);
  }).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-sid', 'data-ver']});
  const tiles = () => Array.from(document.querySelectorAll('#grid .tile'));
  window.deftGrid = (action) => {
    const sel = tiles().filter(t => t.classList.contains('sel')).map(t => [t.dataset.sid, Number(t.dataset.ver)]);
    G.push({sel: JSON.stringify(sel), action: action});
    document.getElementById('btn-grid-act').click();
  };
  window.deftGridTake = (...a) => {
    const p = G.shift();
    return p ? [a[0], a[1], p.sel, p.action, a[4]] : a;
  };
  let lastTile = -1;
  const mark = () => {
    const n = tiles().filter(t => t.classList.contains('sel')).length;
    const m = document.getElementById('grid-count');
    if (m) m.textContent = n + ' selected';
  };
  document.addEventListener('click', (e) => {
    if (e.target.closest('#zoom')) { zoomClose(); return; }
    const b = e.target.closest('.deft-act');
    if (b && !b.disabled) { e.preventDefault(); deftAct(b.dataset.act, b.dataset.label); return; }
    const t = e.target.closest('#grid .tile');
    if (t) {
      const all = tiles(), i = all.indexOf(t);
      if (e.shiftKey && lastTile >= 0) {
        const [a, z] = [Math.min(lastTile, i), Math.max(lastTile, i)];
        for (let k = a; k <= z; k++) all[k].classList.add('sel');
      } else { t.classList.toggle('sel'); }
      lastTile = i; t.focus(); mark();
    }
  });
  const typing = (t) => t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
    (t.tagName === 'INPUT' && !['radio', 'checkbox', 'range', 'button'].includes(t.type)));
  const visible = (id) => {
    const el = document.getElementById(id);
    return el && el.offsetParent !== null ? el : null;
  };
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (typing(t)) return;
    if (visible('grid')) {
      const all = tiles(); let i = all.indexOf(document.activeElement);
      const cols = Math.max(1, Math.round(document.getElementById('grid').clientWidth / 130));
      const go = {'ArrowRight': 1, 'ArrowLeft': -1, 'ArrowDown': cols, 'ArrowUp': -cols}[e.key];
      if (go !== undefined && all.length) {
        e.preventDefault();
        i = Math.min(all.length - 1, Math.max(0, (i < 0 ? 0 : i + go)));
        all[i].focus(); lastTile = i; return;
      }
      if (e.key === ' ' && i >= 0) { e.preventDefault(); all[i].classList.toggle('sel'); lastTile = i; mark(); return; }
      if (e.key === 'a') { e.preventDefault(); all.forEach(x => x.classList.add('sel')); mark(); return; }
      if (e.key === 'Escape') { all.forEach(x => x.classList.remove('sel')); mark(); return; }
      const ga = {'Enter': 'accept', 'k': 'keep', 'x': 'exclude'}[e.key];
      if (ga) { e.preventDefault(); deftGrid(ga); return; }
      if (e.key === 'u') { e.preventDefault(); document.getElementById('btn-grid-undo').click(); }
      return;
    }
    if (!visible('card')) return;
    if (zoomOpen()) {  // z and Esc close the large image; any other key closes it and does what it does
      zoomClose();
      if (e.key === 'Escape' || e.key === 'z') { e.preventDefault(); return; }
    }
    if (e.key === 'r') {
      const inp = document.querySelector('#relabel-dd input');
      if (inp) { e.preventDefault(); inp.focus(); inp.select && inp.select(); }
      return;
    }
    if (['1', '2', '3'].includes(e.key)) {
      const b = document.getElementById('btn-s' + e.key);
      if (b && !b.disabled) { e.preventDefault(); deftAct(b.dataset.act, b.dataset.label); }
      return;
    }
    if (e.key === 'k') { e.preventDefault(); deftAct('keep'); return; }
    if (e.key === 'x') { e.preventDefault(); deftAct('exclude'); return; }
    const map = {'u': 'btn-undo', 'ArrowRight': 'btn-next', 'j': 'btn-next', 'ArrowLeft': 'btn-prev',
                 'p': 'btn-prev', 'n': 'btn-pending', 'z': 'btn-zoom'};
    const ops = {'btn-undo': 'undo', 'btn-next': 'next', 'btn-prev': 'prev', 'btn-pending': 'pending'};
    const el = map[e.key] && document.getElementById(map[e.key]);
    if (!el || el.disabled) return;
    e.preventDefault();
    if (ops[el.id]) deftNav(ops[el.id]); else el.click();
  });
})();
</script>
"""
# Map: a click on a point opens that sample in Review (the sample id travels from the point clicked).
# Points overlap (flagged ones are drawn over the others, and over each other), so a click opens the point whose
# centre is nearest to it among those under it, ringed ones first: every point opens with a click at its centre,
# covered or not; points on the very same spot take turns on successive clicks there.
MAP_JS = """
<script>
(() => {
  let picked = '', lastXY = null;
  window.deftMapTake = (...a) => [a[0], a[1], picked];
  // the sample under client point (x, y): nearest centre among the circles containing it (ringed first on a
  // tie); `after`: the sample a click there opened last, to open the next one on the same spot
  window.deftMapPick = (x, y, after) => {
    const svg = document.querySelector('#map svg');
    const m = svg && svg.getScreenCTM();
    if (!m) return '';
    const p = new DOMPoint(x, y).matrixTransform(m.inverse());
    const hits = [];
    for (const c of svg.querySelectorAll('.pt')) {
      const d = Math.hypot(c.cx.baseVal.value - p.x, c.cy.baseVal.value - p.y);
      const ring = c.classList.contains('flag');
      if (d <= c.r.baseVal.value + (ring ? 1 : 0)) hits.push({sid: c.dataset.sid, d: d, ring: ring});
    }
    if (!hits.length) return '';
    const best = Math.min(...hits.map(h => h.d));
    const tied = hits.filter(h => h.d <= best + 0.25).sort((a, b) => (b.ring - a.ring));
    const i = tied.findIndex(h => h.sid === after);
    return tied[(i + 1) % tied.length].sid;
  };
  document.addEventListener('click', (e) => {
    if (!e.target.closest('#map svg')) return;
    const here = [e.clientX, e.clientY];
    const same = lastXY && Math.abs(lastXY[0] - here[0]) < 2 && Math.abs(lastXY[1] - here[1]) < 2;
    // a click without a position (keyboard, or dispatched on a circle) opens the circle it was sent to
    let sid = (e.clientX || e.clientY) ? window.deftMapPick(e.clientX, e.clientY, same ? picked : '') : '';
    const p = e.target.closest('#map .pt');
    if (!sid && p) sid = p.dataset.sid;
    if (!sid) return;
    picked = sid;
    lastXY = here;
    document.getElementById('btn-map-open').click();
  });
})();
</script>
"""
CSS = """
.pbar {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 4px 0;}
.pbar > div {height: 100%; background: #2563eb;}
#card .row {display: flex; gap: 16px; align-items: flex-start;}
#card img.main {width: 300px; height: 300px; object-fit: contain; image-rendering: pixelated;
  background: #f3f4f6; border-radius: 6px;}
#card h3 {margin: 0 0 6px 0; font-family: monospace;}
#card table {font-size: 0.95em;}
#card td {padding: 2px 8px 2px 0;}
#card .sugg {display: flex; flex-direction: column; gap: 6px; margin-top: 8px;}
#card .sugg button {text-align: left; padding: 3px 10px; border-radius: 6px; border: 1px solid #cbd5e1;
  background: #eff6ff; cursor: pointer;}
#card .sugg button:hover {background: #dbeafe;}
#card .src {color: #6b7280; font-size: 0.85em;}
#review-msg, #batch-msg, #grid-msg {min-height: 1.5em;}
#no-login-note, #no-login-note .prose, #no-login-note p {font-size: 0.8rem !important; line-height: 1.35;
  color: #4b5563;}
#no-login-note p {margin: 2px 0 0 0;}
#reviewer-box {gap: 10px; align-items: flex-start; flex-grow: 2;}
#no-login-note {flex-grow: 2;}
#app-title h1 {margin: 0; font-size: 1.8em;}
#app-title p {margin: 2px 0 0 0;}
#grid .group h4 {margin: 10px 0 4px 0;}
#grid .tiles {display: flex; flex-wrap: wrap; gap: 6px;}
#grid .tile {width: 120px; border: 3px solid transparent; border-radius: 6px; cursor: pointer; padding: 2px;
  font-size: 0.7em; overflow: hidden; outline: none;}
#grid .tile:focus {border-color: #93c5fd;}
#grid .tile.sel {border-color: #2563eb; background: #dbeafe;}
#grid .tile img {width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated;}
.recent {font-size: 0.85em; color: #374151;}
.evidence {font-size: 0.8em; color: #374151;}
.evidence .ev-rows {display: flex; gap: 18px; flex-wrap: wrap;}
.evidence .ev-note {margin: 0 0 2px 0;}
.evidence .ev-tiles {display: flex; gap: 6px; flex-wrap: wrap; margin: 2px 0 0;}
.evidence figure {margin: 0; text-align: center;}
.evidence figure img {width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated;}
#f-show label {padding: 5px 7px; font-size: 0.88em;}
#f-show .wrap {gap: 6px;}
#queue-note {font-size: 0.85em; color: #4b5563;}
#card-col {gap: 4px;}
:is(#btn-prev, #btn-next, #btn-pending, #btn-zoom) {padding-left: 4px; padding-right: 4px; white-space: nowrap;}
#map svg {width: 100%; max-width: 760px; height: auto; background: #fafafa; border: 1px solid #e5e7eb;}
#map .pt {cursor: pointer;}
#map-plumbing, #review-plumbing {display: none !important;}
#zoom {position: fixed; inset: 0; z-index: 1000; display: flex; align-items: center; justify-content: center;
  background: rgba(17, 24, 39, .88); cursor: zoom-out;}
#zoom[hidden] {display: none;}
#zoom figure {margin: 0; text-align: center;}
#zoom img.zoom-img {height: 80vh; width: auto; max-width: 94vw; object-fit: contain; background: #f3f4f6;
  border-radius: 4px;}
#zoom img.pixelated {image-rendering: pixelated;}
#zoom figcaption {color: #f9fafb; margin-top: 8px; font-size: 0.95em;}
#map .legend span {display: inline-block; margin-right: 10px; font-size: 0.85em;}
body:has(#card[data-sid=""]) :is(#btn-keep, #btn-exclude, #btn-zoom, #btn-batch) {opacity: .45; pointer-events: none;}
"""

