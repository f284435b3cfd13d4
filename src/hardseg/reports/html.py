"""A self-contained HTML page of a report: its Markdown as HTML plus the figures as base64 PNGs.

The converter handles only what :func:`hardseg.reports.markdown.write_report` writes: ``#`` headings,
paragraphs, pipe tables (``\\|`` is a literal bar), ``- `` lists, ``**bold**`` and ```code```.
No external CSS, JS, font or image: the page opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1150px;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:0.3em 0.6em;text-align:left;vertical-align:top}
th{background:#eef2f7}tr:nth-child(even) td{background:#fafafa}
code{background:#f2f2f2;padding:0 0.25em;border-radius:3px;font-size:0.92em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.9em;color:#555}h1{border-bottom:2px solid #ccc;padding-bottom:0.2em}"""
_TABLE_SEP = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_ITEM = re.compile(r"^\s*[-*]\s+")


def inline(text: str) -> str:
    """Escape ``text`` for HTML, then ``**bold**`` → <strong>, ```code``` → <code>, ``\\|`` → ``|``."""
    out = html.escape(text.replace("\\|", "|"), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip() for c in _CELL_SPLIT.split(line)]


def _table(lines: list[str]) -> str:
    head, body = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    rows = ["<tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body]
    return "<table>\n<thead>" + rows[0] + "</thead>\n<tbody>\n" + "\n".join(rows[1:]) + "\n</tbody>\n</table>"


def markdown_to_html(markdown_text: str) -> str:
    """The HTML body of ``markdown_text`` (the subset described in this module's docstring)."""
    lines, out, i = markdown_text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{inline(m.group(2).strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
        elif _ITEM.match(line):
            items = []
            while i < len(lines) and _ITEM.match(lines[i]):
                items.append(f"<li>{inline(_ITEM.sub('', lines[i]))}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,6}\s|\s*[-*]\s|\s*\|)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a lone "|" line that is no table
                para, i = [line.strip()], i + 1
            out.append(f"<p>{inline(' '.join(para))}</p>")
    return "\n".join(out)


def _figure(caption: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{cap}">'
            f"<figcaption>{cap}</figcaption></figure>")


def render_html(markdown_text: str, images: dict[str, Path]) -> str:
    """One self-contained HTML page: the report's Markdown as HTML, then ``images`` ({caption: PNG
    path}) embedded as ``data:image/png;base64,`` URIs under a "Figures" heading."""
    title = next((m.group(1) for m in re.finditer(r"^#\s+(.*)$", markdown_text, re.M)), "hardseg report")
    figures = "\n".join(_figure(c, p) for c, p in images.items())
    body = markdown_to_html(markdown_text) + (f"\n<h2>Figures</h2>\n{figures}" if figures else "")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}'
            f"</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
