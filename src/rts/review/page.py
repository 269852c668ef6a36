"""The offline review page: one HTML file beside ``chips/``, no network, no server.

Keys: ``1``/``y`` RTS, ``2``/``n`` not RTS, ``3``/``u`` unsure (each moves on to the next
candidate), ``0``/Backspace clears, ``j``/→ next, ``k``/← previous, ``s`` saves. Verdicts are kept in
the browser's ``localStorage`` as they are made (a closed tab loses nothing) and saved as a download,
``verdicts-<review id>.json``, which ``rts review import`` reads. ``window.rtsReview.verdicts()``
returns the same JSON object.
"""

from __future__ import annotations

import html
import json

VERDICTS_FORMAT = "rts-review-verdicts/1"
VERDICTS = ("rts", "not_rts", "unsure")

_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>RTS review __TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#1e1e1e;color:#ddd}
header{position:sticky;top:0;background:#111;padding:8px 14px;border-bottom:1px solid #333;z-index:1}
header b{color:#fff} kbd{background:#333;border-radius:3px;padding:0 4px}
main{display:flex;flex-wrap:wrap;gap:10px;padding:12px}
.card{border:3px solid #333;border-radius:6px;padding:6px;background:#262626}
.card.current{border-color:#4aa3ff}
.card.rts{background:#1f3a24}.card.not_rts{background:#42201f}.card.unsure{background:#3d3820}
.card img{display:block;image-rendering:pixelated}
.meta{font-size:12px;margin-top:4px}.verdict{font-weight:bold}
</style></head><body>
<header><b>RTS review</b> __TITLE__ &middot; <span id="progress"></span> &middot;
<kbd>1</kbd>/<kbd>y</kbd> RTS &middot; <kbd>2</kbd>/<kbd>n</kbd> not RTS &middot; <kbd>3</kbd>/<kbd>u</kbd> unsure &middot;
<kbd>0</kbd> clear &middot; <kbd>j</kbd>/<kbd>k</kbd> next/previous &middot; <kbd>s</kbd> save
<button id="save">save verdicts</button> <span id="saved"></span></header>
<main id="cards"></main>
<script id="review-data" type="application/json">__DATA__</script>
<script>
(() => {
  const data = JSON.parse(document.getElementById('review-data').textContent);
  const key = 'rts-review-' + data.review_id;
  const LABEL = {rts: 'RTS', not_rts: 'not RTS', unsure: 'unsure'};
  let verdicts = {};
  try { verdicts = JSON.parse(localStorage.getItem(key) || '{}'); } catch (e) { verdicts = {}; }
  let current = 0;
  const main = document.getElementById('cards');
  const cards = data.items.map((c, i) => {
    const d = document.createElement('div');
    d.className = 'card'; d.id = 'card-' + c.id; d.dataset.id = c.id;
    d.innerHTML = `<img src="${c.chip}" alt="${c.id}" title="${c.panels.join(' | ')}">
      <div class="meta">#${i + 1} <b>${c.id}</b> &middot; p=${c.score.toFixed(3)} &middot; ${c.stratum} &middot;
      ${c.region} &middot; ${Math.round(c.area_m2)} m&sup2; &middot; <span class="verdict"></span></div>`;
    d.addEventListener('click', () => { current = i; draw(); });
    main.appendChild(d);
    return d;
  });
  function draw() {
    cards.forEach((d, i) => {
      const v = verdicts[d.dataset.id];
      d.className = 'card' + (v ? ' ' + v : '') + (i === current ? ' current' : '');
      d.querySelector('.verdict').textContent = v ? LABEL[v] : '';
    });
    const n = Object.keys(verdicts).length;
    document.getElementById('progress').textContent = `${n} of ${cards.length} judged, at #${current + 1}`;
    if (cards[current]) cards[current].scrollIntoView({block: 'nearest'});
  }
  function keep() { localStorage.setItem(key, JSON.stringify(verdicts)); }
  function mark(v) {
    const id = data.items[current].id;
    if (v) verdicts[id] = v; else delete verdicts[id];
    keep();
    if (v && current < cards.length - 1) current += 1;
    draw();
  }
  function payload() {
    return {format: data.verdicts_format, review_id: data.review_id,
            verdicts: data.items.filter(c => verdicts[c.id]).map(c => ({id: c.id, verdict: verdicts[c.id]}))};
  }
  function save() {
    const blob = new Blob([JSON.stringify(payload(), null, 1)], {type: 'application/json'});
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'verdicts-' + data.review_id + '.json';
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    document.getElementById('saved').textContent = `saved ${payload().verdicts.length} verdicts as ${a.download}`;
  }
  document.getElementById('save').addEventListener('click', save);
  document.addEventListener('keydown', e => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === '1' || k === 'y') mark('rts');
    else if (k === '2' || k === 'n') mark('not_rts');
    else if (k === '3' || k === 'u') mark('unsure');
    else if (k === '0' || k === 'Backspace') mark(null);
    else if (k === 'j' || k === 'ArrowRight' || k === 'ArrowDown') { current = Math.min(current + 1, cards.length - 1); draw(); }
    else if (k === 'k' || k === 'ArrowLeft' || k === 'ArrowUp') { current = Math.max(current - 1, 0); draw(); }
    else if (k === 's') save();
    else return;
    e.preventDefault();
  });
  window.rtsReview = {verdicts: payload, save: save, current: () => current, ready: true};
  draw();
})();
</script></body></html>
"""


def render_page(content: dict) -> str:
    """The review page of a review folder's ``candidates.json`` content."""
    by_id = {c["id"]: c for c in content["candidates"]}
    items = [{k: by_id[i][k] for k in ("id", "chip", "panels", "score", "stratum", "region", "area_m2")} for i in content["order"]]
    data = {"review_id": content["review_id"], "verdicts_format": VERDICTS_FORMAT, "items": items}
    # "</" cannot end the script element from inside the JSON
    text = json.dumps(data).replace("</", "<\\/")
    title = html.escape(f"{content['review_id']} ({content['mode']}, {len(items)} candidates)")
    return _TEMPLATE.replace("__TITLE__", title).replace("__DATA__", text)
