"""Building blocks of the HTML reports: the page (with ``report.css`` and ``report.js`` inlined), tables, images.

Pages are self-contained: no network, no server; images are inlined as data URIs or linked relatively.
"""
from __future__ import annotations

import base64
import html
import io
from importlib import resources
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

esc = html.escape


def png_data_uri(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def page(title: str, body: str) -> str:
    """A complete HTML page around ``body`` (HTML), with the reports' style and script inlined."""
    package = resources.files(__package__)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="neural_parts.report"><title>{esc(title)}</title>'
            f'<style>{(package / "report.css").read_text()}</style></head>\n<body>\n{body}\n'
            f'<script>{(package / "report.js").read_text()}</script>\n</body></html>\n')


def write_page(path: str | Path, title: str, body: str) -> Path:
    """Write ``page(title, body)`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page(title, body), encoding="utf-8")
    return path


def cell(value) -> str:
    """A table cell: numbers right-aligned with ``data-sort`` holding the exact value; HTML strings as given."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        v = float(value)
        text = f"{int(v)}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"
        return f'<td class="np-num" data-sort="{v:.9g}">{text}</td>'
    return f"<td>{value}</td>"


def table(headers: list[str], rows: list[list], sortable: bool = False, table_id: str = "") -> str:
    """An HTML table; ``sortable``: clicking a header sorts by that column (``report.js``). Cells: see ``cell``;
    strings are inserted as HTML (escape text with ``esc`` first)."""
    attrs = (f' id="{esc(table_id)}"' if table_id else "") + (' class="np-table np-sortable"' if sortable
                                                               else ' class="np-table"')
    head = "".join(f'<th data-column="{k}">{esc(h)}</th>' for k, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def header(title: str, subtitle: str) -> str:
    """The page header: a title and a line under it (both text)."""
    return f'<header><h1>{esc(title)}</h1><div class="np-sub">{esc(subtitle)}</div></header>'


def section(title: str, content: str, note: str = "") -> str:
    """A card of the page: an optional title (text), an optional note (text) and ``content`` (HTML)."""
    heading = f"<h2>{esc(title)}</h2>" if title else ""
    remark = f'<p class="np-note">{esc(note)}</p>' if note else ""
    return f"<section>{heading}{remark}{content}</section>"


def cards(items: list[tuple[str, str, str]]) -> str:
    """Headline numbers: (label, value, small print) text triples."""
    return '<div class="np-cards">' + "".join(
        f'<div class="np-card"><div class="np-small">{esc(label)}</div><div class="np-big">{esc(value)}</div>'
        f'<div class="np-small">{esc(small)}</div></div>' for label, value, small in items) + "</div>"


def viewer_frame(src: str, caption: str) -> str:
    """An embedded viewer page (a relative link), with a caption and a link to open it on its own."""
    return (f'<figure class="np-viewer"><iframe src="{esc(src)}" loading="lazy" title="{esc(caption)}"></iframe>'
            f'<figcaption>{esc(caption)} · <a href="{esc(src)}">open alone</a></figcaption></figure>')
