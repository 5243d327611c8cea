"""The results page in a real browser: headless Chromium loads it from disk, every image
decodes, every table is there, and the screenshot is not blank.

Needs Debian's `chromium` (`apt-get install -y chromium`). Without it the test
skips locally and FAILS under CI (CI=true), where `make test` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars", "--disable-dev-shm-usage")


def _chromium() -> str:
    exe = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                if p and os.access(p, os.X_OK)), None)
    if exe is None:
        msg = "headless chromium not found: `apt-get install -y chromium` (make test installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _run(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True,
                          text=True, timeout=90, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from test_report import make_fixture_report

    tmp = make_fixture_report(tmp_path_factory.mktemp("site"))
    return tmp / "reports" / "index.html"


def test_every_image_loads_and_every_table_is_present(page, tmp_path):
    exe = _chromium()
    # virtual time lets the load event (and the page's marking script) run before the DOM is dumped
    r = _run(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    dom = r.stdout
    assert r.returncode == 0 and "</html>" in dom, r.stderr[-2000:]
    assert 'data-images-checked="yes"' in dom, "the page's load handler did not run"
    states = re.findall(r'<img\b[^>]*?\bdata-state="(\w+)"', dom)
    imgs = re.findall(r"<img\b", dom)
    from test_report import FIGURES

    assert len(imgs) == len(FIGURES) and states == ["loaded"] * len(FIGURES), states
    reference = yaml.safe_load((ROOT / "reports" / "paper_reference.yaml").read_text())
    for t in reference["tables"]:
        assert f'data-table="{t["id"]}"' in dom, t["id"]
    for section in ("provenance", "tables", "figures", "beyond", "metrics"):
        assert f'id="{section}"' in dom and f'href="#{section}"' in dom


def test_screenshot_is_not_blank(page, tmp_path):
    from PIL import Image

    exe = _chromium()
    shot = tmp_path / "page.png"
    r = _run(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", "--virtual-time-budget=5000", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colors = img.getcolors(maxcolors=1 << 16)  # None: more than 65536 colours, certainly not blank
    assert colors is None or len(colors) > 50, f"screenshot has only {len(colors)} colours"
    # the dark header band and the light body are both there (the CSS applied)
    assert img.getpixel((10, 10)) != img.getpixel((10, 1500))


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_fails_in_ci_and_skips_locally(monkeypatch, ci, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y chromium"):
        _chromium()
