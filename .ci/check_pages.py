"""Look at HTML pages the way a reader does, in headless Chromium; exit 1 on any problem.

    python .ci/check_pages.py [--site DIR] PAGE.html [PAGE.html ...]

For every PAGE: it must load in Chromium (Debian's ``chromium``, driven through the DevTools
protocol over ``--remote-debugging-pipe``: nothing but the standard library here), with no console
error, no uncaught exception, no failed resource load, and every image decoded. For every HTML
file under ``--site`` (and every PAGE): every internal link and image must point at a file that
exists, and a link's ``#fragment`` at an id of its target page. Nothing outside ``file://`` is
loaded; a page that asks for the network fails (the browser is started without network features).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-pipe"]
LOAD_TIMEOUT_S = 60.0
SETTLE_S = 1.5  # after the load event: scripts such as MathJax typeset, late errors arrive


class Refs(HTMLParser):
    """The ids of a page and the local files and fragments it refers to."""

    def __init__(self):
        super().__init__()
        self.ids, self.refs = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in {"a": ("href",), "img": ("src",), "script": ("src",), "link": ("href",)}.get(tag, ()):
            if a.get(key):
                self.refs.append((tag, a[key]))


def parse(path: str) -> Refs:
    refs = Refs()
    with open(path, encoding="utf-8", errors="replace") as f:
        refs.feed(f.read())
    return refs


def static_problems(pages: list[str]) -> list[str]:
    """Broken internal links, images, scripts and stylesheets of ``pages`` (local files only)."""
    problems, ids = [], {}
    for page in pages:
        for tag, ref in parse(page).refs:
            url = urlsplit(ref)
            if url.scheme in ("http", "https", "mailto", "data", "javascript") or url.netloc:
                continue
            target = page if not url.path else os.path.normpath(os.path.join(os.path.dirname(page), unquote(url.path)))
            if os.path.isdir(target):
                target = os.path.join(target, "index.html")
            if not os.path.exists(target):
                problems.append(f"{page}: <{tag}> {ref}: {target} does not exist")
            elif url.fragment and target.endswith(".html"):
                if target not in ids:
                    ids[target] = parse(target).ids
                if unquote(url.fragment) not in ids[target]:
                    problems.append(f"{page}: <{tag}> {ref}: no id {url.fragment!r} in {target}")
    return problems


class Browser:
    """Chromium driven through the DevTools protocol on file descriptors 3 (in) and 4 (out)."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="check-pages-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        os.set_inheritable(to_chrome_r, True)
        os.set_inheritable(from_chrome_w, True)

        def fds():  # the child reads the protocol on fd 3 and writes it on fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            import select

            ready, _, _ = select.select([self._from_chrome], [], [], 0.2)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the protocol pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
                return True
            try:
                self.events.append(self._read_message(deadline))
            except TimeoutError:
                return False

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        import shutil

        shutil.rmtree(self.profile, ignore_errors=True)


def page_problems(browser: Browser, path: str) -> tuple[list[str], str]:
    """Load ``path`` in a new tab; what went wrong, and the page's title."""
    url = "file://" + os.path.abspath(path)
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session=session)
    browser.events.clear()
    nav = browser.call("Page.navigate", {"url": url}, session=session)
    problems = []
    if nav.get("errorText"):
        problems.append(f"does not load: {nav['errorText']}")
    elif not browser.wait_for("Page.loadEventFired", session, LOAD_TIMEOUT_S):
        problems.append(f"no load event within {LOAD_TIMEOUT_S:.0f} s")
    browser.drain(SETTLE_S)
    for e in browser.events:
        if e.get("sessionId") != session:
            continue
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            problems.append(f"uncaught exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            problems.append(f"console.{p['type']}: {args}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            problems.append(f"console error: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            problems.append(f"failed to load a resource: {p.get('errorText')}")
    check = ("JSON.stringify({title: document.title, text: document.body ? document.body.innerText.length : 0,"
             " images: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
             ".map(i => i.getAttribute('src').slice(0, 80))})")
    result = json.loads(browser.call("Runtime.evaluate", {"expression": check, "returnByValue": True},
                                     session=session)["result"]["value"])
    if result["images"]:
        problems.append(f"images that did not load: {result['images']}")
    if result["text"] < 200:
        problems.append(f"the page shows almost no text ({result['text']} characters)")
    browser.call("Target.closeTarget", {"targetId": target})
    return problems, result["title"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+", help="HTML files to load in Chromium")
    ap.add_argument("--site", help="a built site: check the links and images of every HTML file under it")
    ap.add_argument("--chromium", default="chromium")
    args = ap.parse_args(argv)
    failed = False
    site = []
    if args.site:
        for folder, _, files in os.walk(args.site):
            site += [os.path.join(folder, f) for f in files if f.endswith(".html")]
    broken = static_problems(sorted(set(site) | {os.path.normpath(p) for p in args.pages}))
    for line in broken:
        print(f"check-pages: {line}", file=sys.stderr)
    failed |= bool(broken)
    print(f"check-pages: links and images of {len(set(site) | set(args.pages))} HTML files: "
          f"{len(broken)} broken")
    browser = Browser(args.chromium)
    try:
        for page in args.pages:
            started = time.monotonic()
            problems, title = page_problems(browser, page)
            for line in problems:
                print(f"check-pages: {page}: {line}", file=sys.stderr)
            failed |= bool(problems)
            print(f"check-pages: {page}: {'FAILED' if problems else 'ok'} ({title!r}, {time.monotonic() - started:.1f} s)")
    finally:
        browser.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
