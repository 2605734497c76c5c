"""The report as a researcher sees it: rendered in headless Chromium at 1400 px.

Asserted from the page itself (a script in a copy of the page writes what the browser measured into
the DOM, which ``--dump-dom`` returns): nothing overflows horizontally and every picture loads. A
full-page screenshot is kept beside the report (its path is printed).

Chromium is Debian's ``chromium`` package; ``bash bootstrap.sh test`` installs it when missing.
Without it this test fails, saying so: it never skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from featstore.pipelines.ensemble import ensemble
from featstore.pipelines.fuse import FuseConfig, fuse, fuse_methods
from featstore.pipelines.report import build_report

from tests.test_fuse import make_embedding_store

WIDTH = 1400
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images).map(i => ({src: i.getAttribute("src"), complete: i.complete, naturalWidth: i.naturalWidth, width: i.getBoundingClientRect().width}));
  const wide = Array.from(document.body.querySelectorAll("*")).filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5).map(e => e.tagName);
  const out = document.createElement("pre");
  out.id = "featstore-probe";
  out.textContent = JSON.stringify({scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, scrollHeight: document.documentElement.scrollHeight, imgs, wide});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (bash bootstrap.sh test does it)", pytrace=False)
    return found


def _browse(chromium: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--allow-file-access-from-files"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """The report of a small store with a dozen sources: fusion runs of three modality sets, all six
    methods audio-visual, and late fusion over runs."""
    store = make_embedding_store(tmp_path_factory.mktemp("browser") / "emb.zarr", clips_per_class=6)
    for modalities, tag in ((("audio",), "audio"), (("visual",), "visual")):
        fuse(store, FuseConfig(method="f4", modalities=modalities, name=f"f4-{tag}", epochs=4, seed=0))
    fuse_methods(store, ("f1", "f2", "f3", "f4", "f5", "f6"), FuseConfig(method="f1", name="av", epochs=4, seed=0))
    for rule in ("mean", "prod", "max"):
        ensemble(store, ["f4-audio", "f4-visual"], rule=rule, name=f"late-av-{rule}")
    out = tmp_path_factory.mktemp("report")
    build_report(store, str(out), submission_split="evaluate")
    return out


def test_report_fits_1400_px_and_every_picture_loads(report_dir):
    chromium = _chromium()
    page = (report_dir / "report.html").read_text()
    assert "late fusion, chosen on evaluate" in page and "best audio-visual" in page
    probe = report_dir / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _browse(chromium, f"--window-size={WIDTH},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="featstore-probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the page's script did not run:\n{dom[-2000:]}"
    measured = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    shot = report_dir / "report-1400px.png"
    height = min(int(measured["scrollHeight"]) + 20, 16000)
    _browse(chromium, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", (report_dir / "report.html").as_uri())
    print(f"\nscreenshot of the report at {WIDTH} px: {shot} ({height} px tall)")
    assert measured["innerWidth"] == WIDTH
    assert measured["scrollWidth"] <= WIDTH, f"the page is {measured['scrollWidth']} px wide; elements past the edge: {measured['wide']}"
    assert not measured["wide"]
    sources = {i["src"] for i in measured["imgs"]}
    assert {"per-class.png", "confusion-best.png", "learning-curves.png", "accuracy-over-time.png"} <= sources
    for image in measured["imgs"]:
        assert image["complete"] and image["naturalWidth"] > 0, f"{image['src']} did not load"
        assert image["width"] <= WIDTH
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
