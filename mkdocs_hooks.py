"""mkdocs hook: the site's home page (docs/index.md) includes README.md, whose links to docs pages and pictures are
written from the repository root (``docs/sweep.md``, ``docs/assets/sweep-adult.png``) so that they work on GitHub.
On the site that page lives inside ``docs/``, so the hook inserts the README itself, with the ``docs/`` prefix of
those links dropped (the snippets extension would insert it unchanged, after this hook)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_README_SNIPPET = '--8<-- "README.md"'
_ROOT_LINK = re.compile(r"\]\(docs/")


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    if _README_SNIPPET not in markdown:
        return markdown
    readme = Path(config["config_file_path"]).parent / "README.md"
    return markdown.replace(_README_SNIPPET, _ROOT_LINK.sub("](", readme.read_text(encoding="utf-8")))
