"""A self-contained HTML report of mined negatives (``MinedNegatives.report(html=PATH)``,
``hardneg report OUT --html PATH``).

One file, no script, no network: histograms of the positive and negative scores and of their
difference, negatives by rank, counts per filter and per source, and the strongest false-negative
suspects (the negatives scoring closest to or above their positive) with the query, its positive
and the suspect side by side.  Plots are inline SVG drawn here; every text is HTML-escaped.
"""
from __future__ import annotations

import html
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from hardneg._io import atomic_text_output

__all__ = ["render_html_report", "write_html_report", "false_negative_suspects"]

_W, _H, _PAD = 520, 220, 36
_COLORS = {"positive": "#2a7ab0", "negative": "#d9622b", "difference": "#5b8c3a", "bar": "#6a5acd"}
_TEXT_CHARS = 400  # characters of each text shown in the suspects table


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.4g}"


def histogram_svg(series: Sequence[Tuple[str, np.ndarray]], title: str, bins: int = 40) -> str:
    """Overlaid histograms (one bar outline per series, shared bins) as an inline ``<svg>``."""
    vals = [np.asarray(a, np.float64)[np.isfinite(a)] for _, a in series]
    allv = np.concatenate(vals) if vals else np.zeros(0)
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" aria-label="{_e(title)}">'
    parts = [head, f'<text x="{_W // 2}" y="14" text-anchor="middle" font-size="13">{_e(title)}</text>']
    if allv.size == 0:
        parts.append(f'<text x="{_W // 2}" y="{_H // 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(parts)
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, edges)[0] for v in vals]
    top = max(1, max(int(c.max()) for c in counts))
    x0, y0, w, h = _PAD, _H - _PAD, _W - 2 * _PAD, _H - 2 * _PAD - 8
    bw = w / bins
    for (name, _), c in zip(series, counts):
        color = _COLORS.get(name, "#444")
        for i, n in enumerate(c.tolist()):
            if n:
                bh = h * n / top
                parts.append(f'<rect x="{x0 + i * bw:.1f}" y="{y0 - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
                             f'fill="{color}" fill-opacity="0.45" stroke="{color}"><title>{_e(name)}: {n} in '
                             f'[{_fmt(edges[i])}, {_fmt(edges[i + 1])})</title></rect>')
    parts.append(_axes(x0, y0, w, h, f"{_fmt(lo)}", f"{_fmt(hi)}", str(top)))
    for k, (name, v) in enumerate(zip([s[0] for s in series], vals)):
        color = _COLORS.get(name, "#444")
        parts.append(f'<rect x="{x0 + 8 + 130 * k}" y="22" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x0 + 22 + 130 * k}" y="31" font-size="11">{_e(name)} ({v.size:,})</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(labels: Sequence[str], values: Sequence[float], title: str, note: Sequence[str] = ()) -> str:
    """A bar chart (one bar per label) as an inline ``<svg>``; ``note`` adds a tooltip per bar."""
    vals = np.asarray(values, np.float64)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" '
             f'aria-label="{_e(title)}">',
             f'<text x="{_W // 2}" y="14" text-anchor="middle" font-size="13">{_e(title)}</text>']
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        parts.append(f'<text x="{_W // 2}" y="{_H // 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(parts)
    lo, hi = min(0.0, float(finite.min())), max(0.0, float(finite.max()))
    if hi <= lo:
        hi = lo + 1.0
    x0, y0, w, h = _PAD, _H - _PAD, _W - 2 * _PAD, _H - 2 * _PAD - 8
    bw = w / max(1, len(vals))
    zero = y0 - h * (0 - lo) / (hi - lo)
    for i, v in enumerate(vals.tolist()):
        if not np.isfinite(v):
            continue
        y = y0 - h * (v - lo) / (hi - lo)
        tip = note[i] if i < len(note) else f"{labels[i]}: {_fmt(v)}"
        parts.append(f'<rect x="{x0 + i * bw + 1:.1f}" y="{min(y, zero):.1f}" width="{max(1.0, bw - 2):.1f}" '
                     f'height="{abs(zero - y):.1f}" fill="{_COLORS["bar"]}"><title>{_e(tip)}</title></rect>')
        if len(vals) <= 32:
            parts.append(f'<text x="{x0 + (i + 0.5) * bw:.1f}" y="{y0 + 12}" text-anchor="middle" '
                         f'font-size="9">{_e(labels[i])}</text>')
    parts.append(_axes(x0, y0, w, h, "", "", _fmt(hi), _fmt(lo)))
    parts.append("</svg>")
    return "".join(parts)


def _axes(x0: float, y0: float, w: float, h: float, xlo: str, xhi: str, ytop: str, ybot: str = "0") -> str:
    return (f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" stroke="#333"/>'
            f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 - h}" stroke="#333"/>'
            f'<text x="{x0}" y="{y0 + 24}" font-size="10">{_e(xlo)}</text>'
            f'<text x="{x0 + w}" y="{y0 + 24}" font-size="10" text-anchor="end">{_e(xhi)}</text>'
            f'<text x="{x0 - 4}" y="{y0 - h + 4}" font-size="10" text-anchor="end">{_e(ytop)}</text>'
            f'<text x="{x0 - 4}" y="{y0}" font-size="10" text-anchor="end">{_e(ybot)}</text>')


def false_negative_suspects(mined: Any, limit: int = 30,
                            per_query: int = 1) -> List[Tuple[int, int, int, float, float]]:
    """The ``limit`` negatives with the smallest margin to their positive (closest to or above it),
    at most ``per_query`` of one query: ``(query row, negative row, best positive row, negative
    score, positive anchor score)``, the smallest margin first (ties by query, then rank)."""
    valid = mined.ids >= 0
    anchor = mined.positive_scores
    margin = np.where(valid & np.isfinite(anchor), anchor.astype(np.float64) - mined.scores, np.inf)
    flat = np.argsort(margin, axis=None, kind="stable")
    out = []
    seen: dict = {}
    for f in flat.tolist():
        j, r = divmod(f, mined.ids.shape[1])
        if not np.isfinite(margin[j, r]) or len(out) == limit:
            break
        if seen.get(j, 0) >= per_query:
            continue
        seen[j] = seen.get(j, 0) + 1
        pos, ps = mined.positive_ids[j], mined.all_positive_scores[j]
        best = int(pos[int(np.nanargmax(ps))]) if pos.size and ps.size == pos.size and np.isfinite(ps).any() \
            else (int(pos[0]) if pos.size else -1)
        out.append((j, int(mined.ids[j, r]), best, float(mined.scores[j, r]), float(anchor[j, r])))
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _short(text: str) -> str:
    return text if len(text) <= _TEXT_CHARS else text[:_TEXT_CHARS] + " …"


def _suspects_table(mined: Any, limit: int) -> str:
    ds = mined.dataset
    cid, texts = ds.corpus_ids, ds.corpus_texts
    src = mined.negative_sources() if mined.sources is not None else None
    rows = []
    for j, neg, pos, s, a in false_negative_suspects(mined, limit):
        row = [ds.query_ids[j], _short(ds.query_texts[j]),
               (cid[pos] + ": " + _short(texts[pos])) if pos >= 0 else "-",
               cid[neg] + ": " + _short(texts[neg]), _fmt(a), _fmt(s), _fmt(a - s)]
        if src is not None:
            r = int(np.flatnonzero(mined.ids[j] == neg)[0])
            row.append(src[j][r])
        rows.append(row)
    header = ["query id", "query", "its positive", "suspect negative", "positive score", "negative score",
              "margin"] + (["source"] if src is not None else [])
    return _table(header, rows, "suspects")


def _counts_section(mined: Any) -> str:
    p, st = mined.params, mined.stats
    cnt = mined.counts
    n = mined.ids.shape[1]
    rows = [("queries", f"{len(mined):,}"), ("documents", f"{mined.dataset.num_docs:,}"),
            ("negatives asked per query", n), ("negatives found", f"{int(cnt.sum()):,}"),
            (f"queries with fewer than {n}", f"{int((cnt < n).sum()):,}"),
            ("queries with none", f"{int((cnt == 0).sum()):,}")]
    pit = st.get("positive_not_in_top")
    if pit:
        rows.append((f"positive not in the top {pit['k']} ({pit['action']})", f"{pit['queries']:,}"))
    out = ["<h2>Counts</h2>", _table(["", "count"], rows)]
    total = max(1, int(st.get("candidates") or 1))
    frows = [(k, p.get(k), f"{v:,}", f"{v / total:.2%}") for k, v in st.get("filtered", {}).items()]
    out += ["<h2>Per filter</h2>", _table(["filter", "value", "candidates removed", "share"], frows)
            if frows else "<p>No candidate was removed by a score filter.</p>"]
    if mined.sources is not None:
        quotas = p.get("negatives_from", {})
        srows = [(name, quotas.get(name, "-"), f"{int((mined.sources == s).sum()):,}",
                  f"{st.get('duplicates', {}).get(name, 0):,}") for s, name in enumerate(mined.source_names)]
        out += ["<h2>Per source</h2>", _table(["source", "quota", "negatives", "duplicates skipped"], srows)]
    return "".join(out)


def _rank_svg(mined: Any) -> str:
    n = mined.ids.shape[1]
    valid = mined.ids >= 0
    means, notes = [], []
    for r in range(n):
        v = mined.scores[:, r][valid[:, r]].astype(np.float64)
        means.append(float(v.mean()) if v.size else float("nan"))
        notes.append(f"rank {r + 1}: {v.size:,} negatives, mean score {_fmt(means[-1]) if v.size else '-'}")
    return bars_svg([str(r + 1) for r in range(n)], means, "mean negative score by rank", notes)


_CSS = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;"
        "margin-top:28px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "vertical-align:top;font-size:13px;text-align:left}table.suspects td{max-width:320px}"
        ".plots svg{margin:4px 12px 4px 0;border:1px solid #eee}pre{background:#f6f6f6;padding:8px;font-size:12px}")


def render_html_report(mined: Any, suspects: int = 30, title: Optional[str] = None) -> str:
    """The report of ``mined`` as one HTML document (str)."""
    valid = mined.ids >= 0
    has_pos = np.array([p.size > 0 for p in mined.positive_ids], dtype=bool)
    pos = mined.anchor_scores[has_pos & ~mined.dropped]
    neg = mined.scores[valid]
    diff = (mined.positive_scores[valid] - mined.scores[valid]).astype(np.float64)
    ds = mined.dataset
    where = f"{ds.path}, split {ds.split}" if ds.path else "a dataset in memory"
    title = title or f"hardneg mining report: {mined.params.get('retriever') or 'negatives'}"
    plots = "".join([histogram_svg([("positive", pos), ("negative", neg)], "scores of positives and negatives"),
                     histogram_svg([("difference", diff)], "positive score minus negative score"),
                     _rank_svg(mined)])
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><p>{_e(where)}: {len(mined):,} queries, {ds.num_docs:,} documents.</p>",
        f'<h2>Scores</h2><div class="plots">{plots}</div>',
        _counts_section(mined),
        f"<h2>Strongest false-negative suspects</h2><p>The {suspects} negatives scoring closest to (or above) "
        "their query's positive anchor, one per query: check that they do not answer the query.</p>",
        _suspects_table(mined, suspects),
        f"<h2>Text report</h2><pre>{_e(mined.report())}</pre>",
        "</body></html>\n"])


def write_html_report(mined: Any, path: Union[str, os.PathLike], suspects: int = 30) -> None:
    """Write :func:`render_html_report` to ``path`` (beside it under a temporary name, then renamed)."""
    with atomic_text_output(path) as f:
        f.write(render_html_report(mined, suspects))
