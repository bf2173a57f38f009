"""Loads a local page in headless Chromium through chromedriver (W3C WebDriver over HTTP).

Only the standard library: chromedriver speaks JSON over HTTP, so no
Selenium is needed. Debian's `chromium` and `chromium-driver` packages
provide the binaries (`.ci/run` installs them).
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def available():
    return bool(CHROMIUM and CHROMEDRIVER)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PageLoad:
    """What a page did in the browser: console messages, images, screenshot."""

    def __init__(self, console, images, external_resources, screenshot_png, title):
        self.console = console  # [{"level", "message"}] of the browser log
        self.images = images  # [{"src", "complete", "natural_width"}]
        self.external_resources = external_resources  # resource URLs fetched (not data:)
        self.screenshot_png = screenshot_png
        self.title = title

    @property
    def errors(self):
        return [m for m in self.console if m["level"] in ("SEVERE", "ERROR")]


class Chromium:
    """One chromedriver process and browser session; a context manager."""

    def __init__(self, width=1280, height=1600, timeout=60):
        self.width, self.height, self.timeout = width, height, timeout
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="mmkeras-chromium-")
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.session = None
        deadline = time.time() + timeout
        while True:
            try:
                self._request("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline or self.driver.poll() is not None:
                    self.close()
                    raise RuntimeError("chromedriver did not start")
                time.sleep(0.1)
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         f"--window-size={width},{height}", f"--user-data-dir={self.profile}",
                         "--hide-scrollbars"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        try:
            value = self._request("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        except Exception:
            self.close()
            raise
        self.session = value["sessionId"]

    def _request(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.code} {e.read()[:500]!r}") from None

    def _session(self, method, path, payload=None):
        return self._request(method, f"/session/{self.session}{path}", payload)

    def script(self, source, *args):
        return self._session("POST", "/execute/sync", {"script": source, "args": list(args)})

    def load(self, path):
        """Opens a local file, waits until it and its images loaded; returns a `PageLoad`."""
        self._session("POST", "/url", {"url": "file://" + os.path.abspath(path)})
        deadline = time.time() + self.timeout
        while True:
            state = self.script(
                "return document.readyState === 'complete' && "
                "Array.from(document.images).every(i => i.complete);"
            )
            if state or time.time() > deadline:
                break
            time.sleep(0.1)
        images = self.script(
            "return Array.from(document.images).map(i => "
            "({src: i.src.slice(0, 40), complete: i.complete, natural_width: i.naturalWidth}));"
        )
        resources = self.script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => !n.startsWith('data:'));"
        )
        title = self.script("return document.title;")
        console = self._session("POST", "/se/log", {"type": "browser"}) or []
        screenshot = base64.b64decode(self._session("GET", "/screenshot"))
        return PageLoad(
            [{"level": m.get("level"), "message": m.get("message")} for m in console],
            images, resources, screenshot, title,
        )

    def full_page_screenshot(self):
        """PNG bytes of the whole page, beyond the window (DevTools `Page.captureScreenshot`)."""
        width, height = self.script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];"
        )
        value = self._session("POST", "/goog/cdp/execute", {
            "cmd": "Page.captureScreenshot",
            "params": {"format": "png", "captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
        })
        return base64.b64decode(value["data"])

    def close(self):
        if self.session is not None:
            try:
                self._session("DELETE", "")
            except Exception:
                pass
            self.session = None
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
