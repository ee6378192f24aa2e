"""A real headless browser for the tests: Chromium driven over the Chrome DevTools Protocol.

The browser is started with ``--remote-debugging-port=0``; it prints the websocket address of
its DevTools endpoint on stderr, and the tests drive one page through it: navigate, evaluate
script, click and type with real input events, and take screenshots. Console errors, uncaught
exceptions and log errors (a refused fetch, a resource that failed) are collected as they come.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_START_TIMEOUT_S = 60
_CALL_TIMEOUT_S = 60


def find_browser() -> str | None:
    """The browser to use: $EXPSTORE_BROWSER, else the first Chromium-like one on the PATH."""
    chosen = os.environ.get("EXPSTORE_BROWSER")
    if chosen:
        return chosen
    return next((found for found in map(shutil.which, BROWSER_NAMES) if found), None)


def missing_reason() -> str | None:
    """Why no browser test can run here, or None when one can."""
    try:
        import websocket  # noqa: F401 - only checks that the client is installed
    except ImportError:
        return "websocket-client is not installed: pip install 'expstore[test]'"
    if find_browser() is None:
        return (f"no Chromium-like browser on the PATH (looked for {', '.join(BROWSER_NAMES)}); "
                "`apt-get install chromium` (.ci/run does it) or set EXPSTORE_BROWSER")
    return None


class Browser:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, profile_dir: str | os.PathLike, width: int = 1280, height: int = 900):
        import websocket

        executable = find_browser()
        assert executable is not None, missing_reason()
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
             "--no-default-browser-check", "--autoplay-policy=no-user-gesture-required", "--hide-scrollbars",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile_dir}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        address = self._devtools_address()
        self.socket = websocket.create_connection(address, timeout=_CALL_TIMEOUT_S, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _devtools_address(self) -> str:
        """The ws:// address the browser prints once its DevTools endpoint listens."""
        assert self.process.stderr is not None
        seen = []
        for line in self.process.stderr:
            seen.append(line)
            if line.startswith("DevTools listening on "):
                # The browser keeps writing to stderr: drain it, or a full pipe would stall it.
                threading.Thread(target=self._drain, args=(self.process.stderr,), daemon=True).start()
                return line.split(" on ", 1)[1].strip()
        raise RuntimeError("the browser exited before its DevTools endpoint listened:\n" + "".join(seen[-20:]))

    @staticmethod
    def _drain(stream) -> None:
        for _line in stream:
            pass

    def call(self, method: str, session: bool = False, **params):
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for_event(self, method: str, timeout_s: float = _CALL_TIMEOUT_S) -> dict:
        """The first event called ``method`` (already received or arriving within the timeout)."""
        deadline = time.monotonic() + timeout_s
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while time.monotonic() < deadline:
            event = json.loads(self.socket.recv())  # waits at most the socket's timeout
            if event.get("method") == method:
                return event
            self.events.append(event)
        raise TimeoutError(f"no {method} within {timeout_s} s")

    def open(self, path: str | os.PathLike) -> None:
        """Load a local file and wait for its load event."""
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a script in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True, timeout=_CALL_TIMEOUT_S * 1000)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        box = self.evaluate(f"""(() => {{
            const element = document.querySelector({json.dumps(selector)});
            element.scrollIntoView({{block: "center"}});
            const r = element.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        """Click an input and type ``text`` into it as keystrokes would."""
        self.click(selector)
        self.call("Input.insertText", session=True, text=text)

    def screenshot(self, path: str | os.PathLike, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page by default), written to ``path``."""
        params: dict = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, "
                                          "document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height,
                                                            "scale": 1})
        png = base64.b64decode(self.call("Page.captureScreenshot", session=True, **params)["data"])
        Path(path).write_bytes(png)
        return png

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and log errors seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(arg.get("value", arg.get("description")))
                                                    for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append("log: " + params["entry"].get("text", ""))
        return found

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
