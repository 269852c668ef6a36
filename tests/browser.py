"""Render a `dvc plots show` / `dvc plots diff` page in headless Chromium with the network cut off,
and read back what each Vega chart holds.

Chromium (Debian's ``/usr/bin/chromium``) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ending in NUL on fds 3 and 4), so no driver package is
needed. Every request that is not ``file:``, ``data:``, ``about:`` or to 127.0.0.1 is failed and
recorded: a page that loads Vega from a CDN renders nothing and says so.

The page must be built from ``web/plots.html`` (scripts/plots_template.py), which keeps each
``vegaEmbed`` result on ``window.__plots``; DVC's default page gives no charts and the errors of
its CDN scripts.

    python tests/browser.py PAGE.html [--screenshot docs/plots.png] [--width 1340] [--png-width 1200]
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ALLOWED = ("file:", "data:", "about:", "blob:", "http://127.0.0.1", "https://127.0.0.1")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-default-apps", "--disable-dev-shm-usage",
    "--mute-audio", "--hide-scrollbars", "--no-proxy-server",
    # a name lookup fails for every host, so a request the interception below misses fails too
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-pipe",
]


def chromium() -> str | None:
    """Path of the Chromium binary (``RTS_CHROMIUM`` or /usr/bin/chromium), or None when absent."""
    path = os.environ.get("RTS_CHROMIUM", CHROMIUM)
    return path if Path(path).is_file() and os.access(path, os.X_OK) else None


@dataclass
class Chart:
    """One Vega chart of the page, as its rendered view holds it."""

    id: str
    title: str | None
    rows: int  # data rows of the chart's inline dataset
    curves: dict[str, int]  # rows per line: "rev | filename" (the fields DVC colours and dashes by)
    revs: dict[str, int]  # rows per revision / experiment (DVC's ``rev`` field)
    line_points: int  # points of the line marks drawn
    error: str | None = None


@dataclass
class Page:
    """What a rendered plots page shows and what went wrong loading it."""

    charts: list[Chart]
    vega_divs: int  # charts in the HTML (DVC's divs whose script calls vegaEmbed)
    images: list[dict]  # {"src": ..., "loaded": bool} per <img>
    errors: list[str] = field(default_factory=list)  # exceptions, console errors, failed loads
    blocked: list[str] = field(default_factory=list)  # network requests that were refused


class CdpError(RuntimeError):
    pass


class Browser:
    """Headless Chromium on a DevTools pipe. Use as a context manager."""

    def __init__(self, binary: str | None = None, *, width: int = 1340, height: int = 900):
        self.binary = binary or chromium()
        if self.binary is None:
            raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y --no-install-recommends chromium")
        self.width, self.height = width, height
        self._id = 0
        self._buf = b""
        self._events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self.errors: list[str] = []
        self.blocked: list[str] = []

    def __enter__(self) -> "Browser":
        self._profile = tempfile.TemporaryDirectory(prefix="rts-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # fds 3 and 4 in the child: move the child's ends above them first so bash's
        # redirections cannot clobber one with the other
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        cmd = ["bash", "-c", f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-',
               self.binary, *FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={self.width},{self.height}"]
        self._log = tempfile.TemporaryFile()
        # its own process group, so a Chromium that does not close is killed with its helpers
        self.proc = subprocess.Popen(cmd, pass_fds=(child_r, child_w), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, env=env, start_new_session=True)
        os.close(child_r)
        os.close(child_w)
        self._w, self._r = to_browser_w, from_browser_r
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"}, timeout=60)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
            self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=10)
        except (CdpError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self._profile.cleanup()

    # --- protocol --------------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 30) -> dict:
        """Send one command and return its result; events that arrive meanwhile are handled."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._w, data):]
        except BrokenPipeError:
            raise CdpError(self._gone(method)) from None
        deadline = time.monotonic() + timeout
        want = self._id
        # an event handler sends commands of its own, so replies can come back out of order
        while want not in self._replies:
            msg = self._next(deadline, method)
            if "id" in msg:
                self._replies[msg["id"]] = msg
            else:
                self._event(msg)
        reply = self._replies.pop(want)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def call(self, method: str, params: dict | None = None, *, timeout: float = 30) -> dict:
        """``send`` on the page's session."""
        return self.send(method, params, session=self.session, timeout=timeout)

    def _next(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {waiting_for} in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise CdpError(self._gone(waiting_for))
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _gone(self, waiting_for: str) -> str:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.seek(0)
        tail = self._log.read()[-2000:].decode(errors="replace")
        return f"Chromium closed the DevTools pipe (exit {self.proc.poll()}) at {waiting_for}; its output:\n{tail}"

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Fetch.requestPaused":
            url = params["request"]["url"]
            if url.startswith(ALLOWED):
                self.call("Fetch.continueRequest", {"requestId": params["requestId"]})
            else:
                self.blocked.append(url)
                self.call("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"})
            return
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(f"exception: {(d.get('exception') or {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            e = params["entry"]
            self.errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        self._events.append(msg)

    def wait_event(self, method: str, *, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self._events):
                if msg.get("method") == method:
                    return self._events.pop(i).get("params", {})
            msg = self._next(deadline, method)
            if "id" in msg:
                self._replies[msg["id"]] = msg
            else:
                self._event(msg)

    def evaluate(self, expression: str, *, timeout: float = 30):
        """The JSON value of ``expression`` in the page (promises are awaited)."""
        out = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in out:
            d = out["exceptionDetails"]
            raise CdpError(f"evaluate: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return out["result"].get("value")

    # --- pages -----------------------------------------------------------------------------------

    def open(self, path: Path, *, timeout: float = 60) -> None:
        """Load ``path`` (a local HTML file) and wait for its load event."""
        self._events.clear()
        # vega-embed empties each chart div (its script included) when it renders: count them here
        self._vega_divs = len(re.findall(r"\bvegaEmbed\('#", Path(path).read_text(encoding="utf-8")))
        out = self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, timeout=timeout)
        if out.get("errorText"):
            raise CdpError(f"cannot open {path}: {out['errorText']}")
        self.wait_event("Page.loadEventFired", timeout=timeout)

    def plots(self, *, timeout: float = 60) -> Page:
        """Wait (polling, at most ``timeout`` s) until every vegaEmbed call of the open page has
        rendered or failed, then read each chart."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.evaluate(_READ_PLOTS)
            if state["ready"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"plots not rendered after {timeout} s: {state['reason']}; errors: {self.errors}")
            time.sleep(0.2)
            self.evaluate("0")  # let pending events (console errors, requests) in
        charts = [Chart(**c) for c in state["charts"]]
        return Page(charts=charts, vega_divs=self._vega_divs, images=state["images"],
                    errors=list(self.errors), blocked=list(self.blocked))

    def screenshot(self, dest: Path, *, png_width: int | None = None, max_height: int = 4000) -> Path:
        """Save the whole page (at most ``max_height`` CSS px tall) as a PNG, scaled to
        ``png_width`` pixels wide (default: the browser's width)."""
        height = min(int(self.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom) + 8")), max_height)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        clip = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": (png_width or self.width) / self.width}
        png = self.call("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(base64.b64decode(png))
        tmp.replace(dest)
        return dest


# Reads window.__plots (kept by web/plots.html): per chart its title, the rows of its inline data
# (the data DVC put into the spec, as the view holds it), counted per colour value and per revision,
# and the points its line marks drew.
_READ_PLOTS = r"""
(() => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 80), loaded: i.complete && i.naturalWidth > 0}));
  const plots = window.__plots;
  if (!plots) {
    if (document.readyState !== 'complete') return {ready: false, reason: 'page still loading'};
    return {ready: true, charts: [], images: images};
  }
  const pending = plots.filter(p => !p.result && !p.error).length;
  // every chart div's inline script has called vegaEmbed by the load event
  if (pending) return {ready: false, reason: `${pending} of ${plots.length} charts still rendering`};
  // DVC draws one line per combination of the fields of these channels (revision, file, field)
  const curveFields = spec => {
    const enc = spec.encoding || {};
    const fields = ['color', 'strokeDash', 'shape'].map(c => enc[c] && enc[c].field).filter(f => f);
    return fields.length || !spec.layer ? fields : curveFields(spec.layer[0]);
  };
  const linePoints = mark => {
    if (!mark) return 0;
    if (mark.marktype === 'line') return (mark.items || []).length;
    let n = 0;
    if (mark.marktype === 'group') for (const item of mark.items || []) for (const child of item.items || []) n += linePoints(child);
    return n;
  };
  const count = (rows, keys) => { const out = {}; for (const r of rows) { const k = keys.map(f => String(r[f])).join(' | '); out[k] = (out[k] || 0) + 1; } return out; };
  const charts = plots.map(p => {
    const t = p.spec.title;
    const chart = {id: p.el, title: typeof t === 'string' ? t : (t && t.text) || null, rows: 0, curves: {}, revs: {}, line_points: 0, error: p.error};
    if (!p.result) return chart;
    const view = p.result.view;
    const inline = (p.result.vgSpec.data || []).filter(d => d.values !== undefined);
    const rows = inline.flatMap(d => view.data(d.name));
    chart.rows = rows.length;
    chart.curves = count(rows, curveFields(p.spec));
    chart.revs = count(rows, ['rev']);
    chart.line_points = linePoints(view.scenegraph().root);
    return chart;
  });
  return {ready: true, charts: charts, images: images};
})()
"""


def render(page: Path, *, screenshot: Path | None = None, width: int = 1340, png_width: int = 1200,
           timeout: float = 60) -> Page:
    """Open ``page`` in a fresh headless Chromium ``width`` px wide with no network, wait for its
    charts and read them; save a screenshot ``png_width`` px wide to ``screenshot`` when given.
    (1340 px holds two of DVC's charts side by side, legends and action menus included.)"""
    with Browser(width=width) as browser:
        browser.open(page, timeout=timeout)
        result = browser.plots(timeout=timeout)
        if screenshot is not None:
            browser.screenshot(screenshot, png_width=png_width)
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path, help="an HTML page, e.g. dvc_plots/index.html")
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--width", type=int, default=1340, help="browser width in CSS px (default 1340)")
    ap.add_argument("--png-width", type=int, default=1200, help="screenshot width in px (default 1200)")
    args = ap.parse_args()
    if not args.page.is_file():
        print(f"error: {args.page} not found: run `dvc plots show` first", file=sys.stderr)
        return 2
    if chromium() is None:
        print(f"error: {CHROMIUM} not found: apt-get install -y --no-install-recommends chromium", file=sys.stderr)
        return 2
    page = render(args.page, screenshot=args.screenshot, width=args.width, png_width=args.png_width)
    for c in page.charts:
        print(f"{c.title}: {c.rows} rows, curves {c.curves}, {c.line_points} line points{', ' + c.error if c.error else ''}")
    print(f"{len(page.charts)} charts of {page.vega_divs} Vega divs, {len(page.images)} images; "
          f"errors: {page.errors or 'none'}; blocked: {page.blocked or 'none'}")
    return 0 if page.charts and not page.errors and not page.blocked else 1


if __name__ == "__main__":
    sys.exit(main())
