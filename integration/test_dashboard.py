"""The dashboards of a running consortium, opened in a real headless browser (Debian's chromium).

`knexa-node demo --dashboard` with 2 nodes: after round 1 the node page shows
its peer ID, a completed exchange and a curve point, and the CPM page its
round; after round 2 the numbers on the pages have changed. Skipped with the
reason where no chromium is installed (`apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as root in a container, without reaching for the network (see env docs).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]


def dom(url: str) -> str:
    """The page's DOM after its scripts ran and fetched the JSON."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def api(url: str) -> dict:
    with urllib.request.urlopen(url + "api/dashboard", timeout=10) as response:
        return json.load(response)


def wait_for(predicate, what: str, timeout: float = 900.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the demo ended before {what}: {process.stderr.read()[-3000:]}")
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    return match.group(1).strip() if match else ""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium): browser test skipped")
def test_dashboards_in_a_real_browser(tmp_path: Path) -> None:
    demo = subprocess.Popen([str(BIN / "knexa-node"), "demo", "--nodes", "2", "--rounds", "3", "--shard-size", "60",
                             "--warmup-epochs", "0", "--exchange-budget", "16", "--transfer-per-category", "16",
                             "--dashboard", "--json",
                             "--workdir", str(tmp_path / "c")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        urls: dict[str, str] = {}
        while len(urls) < 3:
            line = demo.stderr.readline()
            assert line, f"the demo printed no dashboard URLs (exit {demo.poll()})"
            match = re.match(r"dashboard (\S+): (http://\S+)", line.strip())
            if match:
                urls[match.group(1)] = match.group(2)

        def node_with_exchange() -> tuple[str, dict] | None:
            for name in ("node-0", "node-1"):
                data = api(urls[name])
                done = [r for r in data["exchanges"] if r["outcome"] == "ok" and r["bytes"]]
                if done and data["curve"] and data["audit"]["ok"]:
                    return name, data
            return None

        name, data = wait_for(node_with_exchange, "a completed exchange", process=demo)
        cpm_data = wait_for(lambda: (d := api(urls["cpm"]))["status"]["cpm"]["rounds_closed"] >= 1 and d,
                            "round 1 closed", process=demo)
        first = dom(urls[name])
        assert data["status"]["peer_id"] in first
        rows = re.findall(r"<tr><td>\d+</td><td>(teacher|student)</td>.*?</tr>", first, re.S)
        assert rows, "no exchange row on the page"
        assert "audit log verifies" in first
        points = len(re.findall(r'class="point-pass1"', first))
        assert points >= 1, "no curve point drawn"
        # Points as the page counts them (numeric Pass@1); read after the first page, so >= what it drew.
        measured = lambda: sum(isinstance(p.get("pass1"), (int, float)) for p in api(urls[name])["curve"])  # noqa: E731
        drawn = measured()
        cpm_first = dom(urls["cpm"])
        assert cpm_data["status"]["peer_id"] in cpm_first
        closed_first = cpm_data["status"]["cpm"]["rounds_closed"]

        wait_for(lambda: api(urls["cpm"])["status"]["cpm"]["rounds_closed"] > closed_first, "another round",
                 process=demo)
        # The page drew what the API held when it loaded, which may already be more than ``data`` held: wait for a
        # point after the first page.
        wait_for(lambda: measured() > max(points, drawn), "a new curve point", process=demo)
        second = dom(urls[name])
        assert len(re.findall(r'class="point-pass1"', second)) > points, "the curve did not grow after a round"
        cpm_second = dom(urls["cpm"])
        rounds = lambda html: len(re.findall(r'<table id="cpm-rounds">.*?</table>', html, re.S)[0].split("<tr>")) - 2  # noqa: E731
        assert rounds(cpm_second) > rounds(cpm_first), "the CPM's rounds table did not grow"
    finally:
        demo.send_signal(signal.SIGTERM)  # the demo stops its daemons on SIGTERM
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
