// The Map tab's script (inlined into the page's <head> by deft/ui/page_assets.py): a click on a point opens that sample
// in Review (the sample id travels from the point clicked).
// Points overlap (flagged ones are drawn over the others, and over each other), so a click opens the point whose
// centre is nearest to it among those under it, ringed ones first: every point opens with a click at its centre,
// covered or not; points on the very same spot take turns on successive clicks there.
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
