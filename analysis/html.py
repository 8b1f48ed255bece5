"""A report's Markdown as one self-contained HTML page: figures embedded as data URIs, readable offline.

The Markdown stays the source (it is what `report.md` holds); this only renders it (markdown-it-py, CommonMark
plus tables) and inlines every local image it references, so the page can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

_IMG = re.compile(r'<img src="([^":]+)" alt="([^"]*)"')
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
"""


def render_page(title: str, markdown_text: str, images_dir: Path) -> str:
    """The page: `markdown_text` rendered, each `![alt](file)` under `images_dir` inlined. A missing image
    raises FileNotFoundError rather than leaving a broken image on the page."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def inline(match: re.Match[str]) -> str:
        path = images_dir / html.unescape(match.group(1))
        mime = _MIME.get(path.suffix.lower())
        if mime is None:
            raise ValueError(f"cannot embed {path}: not an image type the report writes")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:{mime};base64,{data}" alt="{match.group(2)}"'

    body = _IMG.sub(inline, body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")
