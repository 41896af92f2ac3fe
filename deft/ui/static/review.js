// The review page's script (inlined into the page's <head> by deft/ui/page_assets.py): card keys, the lean key route,
// the counter's poll, the evidence strip's timing, the grid's selection and keys, the zoom overlay.
//
// Review actions are sent by this script, never "whatever the server has at position N": each one
// carries the sample id and version read from the card on screen (#card data-sid / data-ver) when
// the key was pressed. Bursts are queued in order; one that arrives for a card that changed is
// refused by the server with a message (not silently dropped, never applied to another sample).
// Keys, the card's own buttons and "Relabel to" take the lean route (POST deft/act, see deft/ui/key_route.py), the only
// way a card decision reaches the server: one request at a time, in order, and the answer's HTML is swapped
// into #card, #counter-live and #msg-live here.
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
