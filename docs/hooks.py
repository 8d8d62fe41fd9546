"""MkDocs hook: the notebooks in ../notebooks/ become pages at notebooks/NAME.ipynb.

The notebooks live beside the code (the tests run them), not under docs/, and MkDocs reads
pages only from docs/. Adding them to the site's files here, before mkdocs-jupyter turns
``.ipynb`` files into pages, keeps one copy of each notebook and no symlinks or copy step.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@event_priority(100)  # before mkdocs-jupyter's on_files (priority 0) wraps the notebooks
def on_files(files: Files, config) -> Files:
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{notebook.name}",
                src_dir=str(NOTEBOOKS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
