"""A small document model (sections of paragraphs, tables, figures) and its HTML and Markdown renderings.

The report is built once as this model, so the two outputs cannot drift apart.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from cifar_lab.files import write_bytes_atomic


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    id: str = ""
    row_keys: list[str] = field(default_factory=list)  # data-row attribute per row (HTML), for tests and styling
    row_classes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    name: str  # file stem of the PNG beside report.md
    caption: str
    png: bytes


Block = str | Table | Figure  # a str is a paragraph; **bold** is the only markup


@dataclass
class Section:
    title: str
    blocks: list[Block]
    id: str = ""


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:12px}
th,td{border:1px solid #ccc;padding:3px 5px;text-align:left}
th{background:#f0f0f0;vertical-align:bottom} td.num{text-align:right;white-space:nowrap}
tr.synthetic td{background:#fff8e1} tr.incomplete td{background:#fdecea}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em;border-radius:4px}
.scroll{overflow-x:auto} figure{margin:1em 0} img{max-width:100%} figcaption{font-size:13px;color:#555}
"""
# Records on <body> how many images decoded and how many tables are wider than the window (they scroll
# sideways), so a headless browser's DOM dump can prove the images loaded and the tables fit.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok);
  document.body.setAttribute("data-images-total", imgs.length);
  var boxes = Array.prototype.slice.call(document.querySelectorAll("div.scroll"));
  var wide = boxes.filter(function (b) { return b.scrollWidth > b.clientWidth + 1; }).length;
  document.body.setAttribute("data-tables-wider-than-window", wide);
  document.body.setAttribute("data-tables", boxes.length);
});
"""


NUMERIC = re.compile(r"^[-+]?[\d,.]+( ± [\d.]+)?( ‡| ÷)?$")  # cells right-aligned via NUM
NUM = ' class="num"'


def _inline_html(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        key = f' data-row="{html.escape(t.row_keys[i])}"' if i < len(t.row_keys) else ""
        cls = f' class="{t.row_classes[i]}"' if i < len(t.row_classes) and t.row_classes[i] else ""
        cells = "".join(f"<td{NUM if NUMERIC.match(c) else ''}>{_inline_html(c)}</td>" for c in row)
        body.append(f"<tr{key}{cls}>{cells}</tr>")
    table_id = f' id="{t.id}"' if t.id else ""
    rows = "".join(body)
    return f'<div class="scroll"><table{table_id}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _block_html(block: Block) -> str:
    if isinstance(block, Table):
        return _table_html(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
            f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>"
        )
    cls = ' class="warn"' if block.startswith("⚠") else ""
    return f"<p{cls}>{_inline_html(block)}</p>"


def to_html(title: str, sections: list[Section]) -> str:
    """One self-contained page: figures inlined as data: URIs, no external resources."""
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{CSS}</style><script>{IMAGE_CHECK}</script></head><body><h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        sid = f' id="{s.id}"' if s.id else ""
        parts.append(
            f"<section{sid}><h2>{html.escape(s.title)}</h2>" + "".join(map(_block_html, s.blocks)) + "</section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _text_md(text: str) -> str:
    """Text as Markdown shows it, never as HTML: names in it come from run files."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _cell_md(text: str) -> str:
    return _text_md(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[Section], out_dir: Path) -> str:
    """Markdown with each figure written as a PNG in ``out_dir`` and linked by relative path."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {_text_md(s.title)}", ""]
        for block in s.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(map(_cell_md, block.header)) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(map(_cell_md, row)) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                write_bytes_atomic(out_dir / f"{block.name}.png", block.png)
                lines.append(f"![{block.name}]({block.name}.png)")
                lines += ["", f"*{_text_md(block.caption)}*"]
            else:
                lines.append(_text_md(block))
            lines.append("")
    return "\n".join(lines)
