"""The headless browser the browser tests drive: Debian's Chromium where installed (.ci/run
installs it), else one on PATH. Tests skip with this reason when there is none."""

from __future__ import annotations

import shutil

NO_BROWSER = (
    "no headless browser: none of chromium, chromium-browser, google-chrome is on PATH; "
    "on Debian run `sudo apt-get install chromium` (.ci/run does), then run the tests again"
)


def chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None
