"""Self-contained report pages: matplotlib figures embedded as PNG, tables as HTML and Markdown, no network."""
from __future__ import annotations

import base64
import html
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,td.t{text-align:left}img.plot{max-width:100%;display:block;margin:1em 0}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:85%}.flag{color:#b00}.ok{color:#070}
details{margin:.2em 0}summary{cursor:pointer}"""


def figure() -> tuple[plt.Figure, plt.Axes]:
    """A new figure of the report's size."""
    return plt.subplots(figsize=(7.5, 4.2), dpi=100)


def img(fig: plt.Figure, alt: str) -> str:
    """The figure as an embedded PNG <img class="plot"> (and closed)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(v: object, digits: int = 3) -> str:
    """A table cell: floats rounded, None/NaN as an en dash."""
    if v is None or isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float):
        return "∞" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def table_html(header: list[str], rows: list[list[object]]) -> str:
    """An HTML table; cells already holding markup must be given as `Markup`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(c: object) -> str:
    text = c if isinstance(c, Markup) else html.escape(fmt(c))
    return f'<td class="t">{text}</td>' if isinstance(c, str) else f"<td>{text}</td>"


def table_md(header: list[str], rows: list[list[object]]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(lines)


class Markup(str):
    """Text already escaped for HTML."""


def page(title: str, body: str) -> str:
    """A complete HTML page around `body`."""
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
