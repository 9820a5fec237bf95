"""One self-contained HTML page: inline CSS, PNGs as data URIs, no external resources.

A small inline script marks the page once loaded: ``<body data-images-ok="yes">`` when every
image decoded (``naturalWidth > 0``), so a headless browser can check the rendering.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from html import escape

from kwh.format.io import atomic_write_bytes

from .sections import Section

__all__ = ["render_page", "write_page", "IMAGE_CHECK_SCRIPT"]

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.na { color: #8a5a00; background: #fff7e0; padding: 0.5em 0.8em; border-left: 3px solid #e0a800; }
.small, footer { font-size: 0.8em; color: #666; }
nav a { margin-right: 1em; }
"""

IMAGE_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', ok ? 'yes' : 'no');
});
"""


def render_page(title: str, sections: list[Section], footer: str = "") -> str:
    """The whole page as a string."""
    nav = " ".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{s.id}" data-available="{"yes" if s.available else "no"}">'
                     f"<h2>{escape(s.title)}</h2>\n{s.body}\n</section>" for s in sections)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n"
            f"<script>{IMAGE_CHECK_SCRIPT}</script>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n"
            f"<footer><p>Written {stamp} by kwh. {escape(footer)}</p></footer>\n"
            "</body>\n</html>\n")


def write_page(path: str | os.PathLike, html: str) -> int:
    """Write the page atomically (temp file in the same folder, fsync, rename); returns bytes."""
    data = html.encode("utf-8")
    atomic_write_bytes(path, data)
    return len(data)
