"""HTML for ``jtm report``: escaping, tables, embedded figures and the page around the sections.

Every piece of text goes through :func:`esc`; figures are PNG bytes embedded as ``data:`` URIs, so the page
needs nothing beside itself. The page's shell and CSS are in :mod:`jtm.evaluation.report_template`.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jtm.evaluation import report_template as tpl


def esc(value: object) -> str:
    """HTML-escape any value's text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def img(png: bytes, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def error(what: str, e: BaseException) -> str:
    """What failed and why, shown in place of the part that could not be built."""
    return f'<p class="error">{esc(what)}: {esc(type(e).__name__)}: {esc(e)}</p>'


def fmt_value(value: object) -> str:
    """Numbers to 4 significant digits (ints as ints), NaN/None as an empty cell, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(value)


def table(df: pd.DataFrame, max_rows: int = 500) -> str:
    """An escaped HTML table of a DataFrame (numbers right-aligned); long tables are cut with a note."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for record in df.head(max_rows).itertuples(index=False):
        cells = []
        for v in record:
            numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{esc(fmt_value(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = note(f"{len(df) - max_rows} more rows not shown.") if len(df) > max_rows else ""
    return html_table(f"<tr>{head}</tr>", rows, css_class="data") + more


def html_table(head: str, rows: Sequence[str], css_class: str = "") -> str:
    """A table from ready HTML (``head``: the header's ``<tr>``s, may be empty; ``rows``: body ``<tr>``s),
    inside a ``div.table-wrap`` so a wide table scrolls sideways instead of running off the page."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    thead = f"<thead>{head}</thead>" if head else ""
    return f'<div class="table-wrap"><table{cls}>{thead}<tbody>{"".join(rows)}</tbody></table></div>'


def key_values(d: dict[str, Any]) -> str:
    """A two-column table of a flat dict (nested values shown as compact JSON)."""
    rows = []
    for k, v in d.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else fmt_value(v)
        rows.append(f"<tr><th>{esc(k)}</th><td>{esc(text)}</td></tr>")
    return html_table("", rows)


def json_block(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=2, default=str))}</pre>"


def page(title: str, inputs: Sequence[Path], sections: Sequence[tuple[str, str, str]]) -> str:
    """The complete document: a header naming ``inputs``, a navigation bar and one ``<section>`` per
    (id, heading, body HTML) of ``sections``, in order."""
    from jtm import __version__

    body = "".join(tpl.SECTION.format(id=esc(sid), title=esc(heading), body=content)
                   for sid, heading, content in sections)
    nav = " ".join(tpl.NAV_LINK.format(id=esc(sid), title=esc(heading)) for sid, heading, _ in sections)
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = "".join(f"<p><code>{esc(p)}</code></p>" for p in inputs)
    return tpl.PAGE.format(title=esc(title), subtitle=subtitle, nav=nav, sections=body,
                           version=esc(__version__), generated=esc(generated))
