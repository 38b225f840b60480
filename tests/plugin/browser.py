"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) and a
``udrl serve`` subprocess, for the browser test and ``docs/screenshots.py``.

Nothing is downloaded: the browser and its driver are the system's, found on PATH or named by
``UDRL_CHROMIUM`` / ``UDRL_CHROMEDRIVER``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

MISSING_BROWSER = ("Chromium is not installed: `apt-get install -y chromium chromium-driver` "
                   "(Debian), or set UDRL_CHROMIUM and UDRL_CHROMEDRIVER")


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = (os.environ.get("UDRL_CHROMIUM") or shutil.which("chromium")
               or shutil.which("chromium-browser"))
    driver = os.environ.get("UDRL_CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser(width: int = 1440, height: int = 1000):
    """A headless Chromium WebDriver (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError(MISSING_BROWSER)
    browser, driver = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udrl_command() -> list[str]:
    """``udrl`` of this environment (the console script beside the interpreter)."""
    script = Path(sys.executable).parent / "udrl"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from plugin.cli import main; sys.exit(main())"]


@contextmanager
def served(workspace: Path, config: Path | None = None, env: dict[str, str] | None = None,
           timeout_s: float = 120.0) -> Iterator[str]:
    """Run ``udrl serve`` on ``workspace`` and yield its base URL once /readyz answers."""
    port = free_port()
    argv = udrl_command() + (["--config", str(config)] if config else []) + [
        "--workspace", str(workspace), "serve", "--port", str(port)]
    log = workspace / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"udrl serve exited with {proc.returncode}:\n"
                                   + log.read_text()[-3000:])
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("udrl serve did not answer in time:\n"
                                   + log.read_text()[-3000:])
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(driver, script: str, timeout_s: float = 30.0, what: str = "the page"):
    """Poll ``script`` (JavaScript returning a value) until it is truthy; return the value."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
            lambda d: d.execute_script(script))
    except Exception as e:
        status = driver.execute_script(
            "const s = document.getElementById('status'); return s ? s.textContent : ''")
        raise AssertionError(f"{what} did not happen within {timeout_s:.0f}s "
                             f"(page status: {status!r})") from e


# JavaScript: what the page shows, per modality section (ids in list order per column)
RENDERED_LISTS = """
return Array.from(document.querySelectorAll('section.modality')).map(s => ({
  task: s.dataset.task,
  lists: Object.fromEntries(Array.from(s.querySelectorAll('.list')).map(l => [
    l.dataset.list, Array.from(l.querySelectorAll('li.hit')).map(li => li.dataset.id)])),
}));
"""
