"""report.html: self-contained, and every image renders in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import NO_BROWSER, chromium
from PIL import Image

from alexnet.models.registry import get_model
from alexnet.viz.report import write_report

TINY = {"widths": (8, 8, 16, 16, 16), "hidden": 32}
CLASSES = ["cat", "dog", "bird <&>"]  # a name that must be escaped


def _history(epochs: int = 4) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 1.5 / e,
            "train_top1": 30.0 + 10 * e,
            "val_loss": 1.6 / e,
            "val_top1": 28.0 + 9 * e,
            "val_top5": 100.0,
            "lr": 0.1 / e,
            "epoch_time": 2.5,
            "images_per_s": 800.0,
        }
        for e in range(1, epochs + 1)
    ]


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, int, int]:
    torch.manual_seed(0)
    model = get_model("alexnet_cifar", num_classes=3, **TINY).eval()
    g = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = [i % 3 for i in range(12)]
    preds = [(i % 3) if i % 4 else (i + 1) % 3 for i in range(12)]  # 3 of 12 wrong
    confusion = np.zeros((3, 3), dtype=np.int64)
    for t, p in zip(labels, preds, strict=True):
        confusion[t, p] += 1
    config = {
        "model": "alexnet_cifar",
        "dataset": "toy",
        "lr": 0.1,
        "augment": ["hflip"],
        "name": "toy-run",
        "recipe": None,
    }
    path = write_report(
        tmp_path / "run",
        config=config,
        history=_history(),
        classes=CLASSES,
        confusion=confusion,
        samples=samples,
        sample_labels=labels,
        sample_preds=preds,
        model=model,
    )
    return path, 12, 3


def test_report_is_self_contained(report) -> None:
    path, n_samples, n_wrong = report
    assert path.name == "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    # 2 curves + confusion + conv1 filters + one per validation image
    assert len(srcs) == 4 + n_samples
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)  # nothing fetched from outside
    assert "<script" not in text
    assert text.count('class="s wrong"') == n_wrong
    assert text.count('class="s ok"') == n_samples - n_wrong
    assert "bird &lt;&amp;&gt;" in text and "bird <&>" not in text
    for heading in (
        "Final metrics",
        "Curves",
        "Confusion matrix",
        "conv1 filters",
        "Validation images",
        "Resolved config",
    ):
        assert heading in text
    assert "64.00 (epoch 4)" in text  # best validation top-1


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Test-only: after the page (and every image) loaded, write what each <img> did into the DOM.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var rows = [];
  document.querySelectorAll('img').forEach(function (im) {
    rows.push({alt: im.alt, ok: im.complete && im.naturalWidth > 0, w: im.naturalWidth});
  });
  var out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = JSON.stringify(rows);
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip(NO_BROWSER)
    path, n_samples, _ = report
    probe = tmp_path / "probe.html"  # a copy with the check script; report.html stays script-free
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"))
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="img-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, "the check script did not run: " + dom.stdout[:500]
    rows = json.loads(
        found.group(1)
        .replace("&quot;", '"')
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
    )
    assert len(rows) == 4 + n_samples
    broken = [r["alt"] for r in rows if not r["ok"]]
    assert not broken, f"images that did not load: {broken}"

    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [*base, "--window-size=1280,2400", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert a.std() > 10  # not a blank page
    # the coloured plots and sample borders put many distinct colours on the page
    assert len(np.unique(a.reshape(-1, 3)[::7], axis=0)) > 200
