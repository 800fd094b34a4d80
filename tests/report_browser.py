"""A Snakemake report as a reader sees it, in headless Chromium (Debian's `chromium`): each of
its results opened as a click in the report opens it, then measured or photographed.

    python tests/report_browser.py measure report.html
    python tests/report_browser.py shots report.html OUT_DIR

The report is one page whose results open inside it (an <img> for a figure, an <iframe> for a
page); a copy of it gets a script that opens the result named after '#' in its address through
the report's own `app.setView`, as its result buttons do. `measure` opens every result in turn
and reports, per result, the size it is shown at and, for a figure, how many of its pixels are
drawn (not white or transparent); `shots` takes a screenshot of the home page and of each result.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# As root in a container: no sandbox, no GPU, nothing fetched from the network, a fresh profile.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--hide-scrollbars"]  # fmt: skip
FIGURE = re.compile(r"\.(svg|png|jpe?g)$")

# Runs in the report: opens result `path` as the report's own buttons do; then, once it has had
# time to lay out, measures it into `out` and calls done.
OPEN = """
function nanogptxOpen(path) {
  const entry = results[path];
  const figure = /\\.(svg|png|jpe?g)$/.test(path);
  app.setView({content: figure ? "img" : "html", contentPath: entry.data_uri, resultPath: path});
  return figure;
}
function nanogptxMeasure(path, figure, out) {
  const entry = results[path];
  const el = Array.from(document.querySelectorAll(figure ? "img" : "iframe"))
    .find(function (x) { return x.getAttribute("src") === entry.data_uri; });
  const rec = {path: path, figure: figure, found: !!el};
  if (el) {
    const r = el.getBoundingClientRect();
    rec.width = r.width; rec.height = r.height;
    if (figure) {  // draw it at its shown size and count the pixels that are not background
      const w = Math.max(1, Math.round(r.width)), h = Math.max(1, Math.round(r.height));
      const c = document.createElement("canvas"); c.width = w; c.height = h;
      const ctx = c.getContext("2d");
      ctx.drawImage(el, 0, 0, w, h);
      const d = ctx.getImageData(0, 0, w, h).data;
      let drawn = 0;
      for (let i = 0; i < d.length; i += 4)
        if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) drawn++;
      rec.drawn = drawn;
      rec.natural = [el.naturalWidth, el.naturalHeight];
    }
  }
  out.push(rec);
}
"""
MEASURE_ALL = """
window.addEventListener("load", function () {
  const paths = Object.keys(results), out = [];
  function next(i) {
    if (i === paths.length) {
      const pre = document.createElement("pre");
      pre.id = "nanogptx-measured"; pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
      return;
    }
    const figure = nanogptxOpen(paths[i]);
    setTimeout(function () { nanogptxMeasure(paths[i], figure, out); next(i + 1); }, 500);
  }
  setTimeout(function () { next(0); }, 300);
});
"""
OPEN_FROM_ADDRESS = """
window.addEventListener("load", function () {
  const path = decodeURIComponent(location.hash.slice(1));
  if (path) setTimeout(function () { nanogptxOpen(path); }, 300);
});
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _with_script(report: Path, script: str, dest: Path) -> Path:
    page = report.read_text()
    at = page.rindex("</body>")
    dest.write_text(page[:at] + f"<script>{OPEN}{script}</script>" + page[at:])
    return dest


def _run(args: list[str], profile: Path) -> str:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def measure(report: Path, width: int = 1400, height: int = 1000) -> list[dict[str, Any]]:
    """Every result of the report opened in turn in a window of width x height: per result
    {"path", "figure", "found", "width", "height"} and for a figure "drawn" (pixels not
    background) and "natural" (its own size in pixels)."""
    with tempfile.TemporaryDirectory(prefix="nanogptx-report-") as tmp:
        page = _with_script(report, MEASURE_ALL, Path(tmp) / "report.html")
        dom = _run([f"--window-size={width},{height}", "--virtual-time-budget=60000",
                    "--dump-dom", page.as_uri()], Path(tmp) / "profile")  # fmt: skip
    found = re.search(r'<pre id="nanogptx-measured">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"the report did not finish measuring in Chromium:\n{dom[-2000:]}")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def results(report: Path) -> list[str]:
    """The paths of the report's results, in the order it lists them."""
    return [r["path"] for r in measure(report)]


def screenshot(report: Path, path: str | None, png: Path, width: int = 1400,
               height: int = 1000) -> Path:  # fmt: skip
    """A screenshot of the report with result `path` open (None: its home page)."""
    with tempfile.TemporaryDirectory(prefix="nanogptx-report-") as tmp:
        page = _with_script(report, OPEN_FROM_ADDRESS, Path(tmp) / "report.html")
        address = page.as_uri() + (f"#{path}" if path else "")
        _run([f"--window-size={width},{height}", "--virtual-time-budget=5000",
              f"--screenshot={png.resolve()}", address], Path(tmp) / "profile")  # fmt: skip
    return png


def main(argv: list[str]) -> None:
    what, report = argv[0], Path(argv[1])
    if what == "measure":
        for r in measure(report):
            print(json.dumps(r))
        return
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    print(screenshot(report, None, out / "report-home.png"))
    for path in results(report):
        name = path.removeprefix("results/").replace("/report/", "-").replace("/", "-")
        print(screenshot(report, path, out / (Path(name).stem + ".png")))


if __name__ == "__main__":
    main(sys.argv[1:])
