"""Rendering the report: a list of ``(title, kind, content)`` sections to Markdown or to one HTML page.

``kind`` is ``text`` (a string), ``table`` (a DataFrame of fractions, shown as percentages),
``table-raw`` (a DataFrame shown as it is), ``image`` (a PNG path) or ``links`` (``{name: path}``).
The HTML page is at most 1400 px wide: pictures scale down to the column, long cells wrap.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from featstore.runs import markdown_table


def _raw_markdown(frame: pd.DataFrame) -> str:
    return markdown_table(frame.map(lambda v: round(float(v), 4) if isinstance(v, float | np.floating) else v), percent=False)


def render_markdown(sections) -> str:
    parts = []
    for i, (title, kind, content) in enumerate(sections):
        parts.append(f"{'#' if i == 0 else '##'} {title}\n")
        if kind == "text":
            parts.append(content + "\n")
        elif kind == "table":
            parts.append(markdown_table(content) + "\n")
        elif kind == "table-raw":
            parts.append(_raw_markdown(content) + "\n")
        elif kind == "links":
            parts.append("\n".join(f"- [{name}]({path})" for name, path in content.items()) + "\n")
        else:
            parts.append(f"![{title}]({content})\n")
    return "\n".join(parts)


def render_html(sections) -> str:
    body = []
    for i, (title, kind, content) in enumerate(sections):
        body.append(f"<h{1 if i == 0 else 2}>{html.escape(title)}</h{1 if i == 0 else 2}>")
        if kind == "text":
            body.append(f"<p>{html.escape(content)}</p>")
        elif kind in ("table", "table-raw"):
            frame = (100 * content).round(1) if kind == "table" else content
            body.append(frame.to_html(na_rep="", border=0))
        elif kind == "links":
            body.append("<ul class='links'>" + "".join(f'<li><a href="{html.escape(p)}">{html.escape(n)}</a></li>' for n, p in content.items()) + "</ul>")
        else:
            body.append(f'<img src="{html.escape(content)}" alt="{html.escape(title)}">')
    style = ("body{font-family:sans-serif;max-width:1360px;margin:1em auto;padding:0 12px;box-sizing:border-box}"
             "table{border-collapse:collapse;font-size:13px;margin-bottom:1em}td,th{padding:2px 6px;text-align:right;border-bottom:1px solid #ddd}"
             "td{overflow-wrap:anywhere}img{max-width:100%;height:auto;display:block}ul.links{columns:4;font-size:13px}"
             "tr:has(td:nth-child(3):not(:empty)) td{font-weight:bold}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>featstore report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
