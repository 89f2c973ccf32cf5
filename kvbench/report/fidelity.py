"""The "Simulator fidelity" section: the fidelity.json of `kvbench validate`, found with the report's inputs.

A validation directory holds ``real/`` and ``sim/`` run folders and ``fidelity.json``. The record is found
when the report is given the directory itself (or any folder above it), its ``real`` or ``sim`` folder, or
one of its runs. Every string from the record goes through ``html.escape`` (page.py's rule for text in
HTML); the section has no script.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.validate.compare import order_text
from kvbench.validate.record import FIDELITY_FILE, METRICS, FidelityRecord, MetricFidelity, load_record

_LAYOUT = ("real", "sim")  # the run folders of a validation directory


@dataclass
class FidelityInput:
    path: Path  # the fidelity.json
    record: FidelityRecord


def _candidates(path: Path) -> list[Path]:
    if path.is_file():
        path = path.parent
    found = []
    # above: DIR/real, DIR/sim/<combo>, DIR/real/<combo>/rep<i> (at most three levels below DIR)
    for up, ancestor in enumerate([path, *list(path.parents)[:3]]):
        if up and (ancestor / FIDELITY_FILE).is_file():
            part = path.relative_to(ancestor).parts[0]
            if part in _LAYOUT:
                found.append(ancestor / FIDELITY_FILE)
    # at or below: DIR itself or a folder holding validations
    found += [p for p in path.rglob(FIDELITY_FILE)
              if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return found


def find_fidelity(paths: list[Path]) -> tuple[list[FidelityInput], list[tuple[str, str]]]:
    """(records found, (path, reason) of those that could not be read)."""
    seen: set[Path] = set()
    found: list[FidelityInput] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        if not raw.exists():
            continue
        for path in sorted(_candidates(raw)):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                found.append(FidelityInput(path, load_record(path)))
            except KvbenchError as exc:
                skipped.append((str(path), str(exc)))
    return found, skipped


# --- HTML ------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _flag(value: bool | None) -> str:
    if value is None:
        return '<td title="not judged">n/a</td>'
    return '<td class="better">yes</td>' if value else '<td class="worse">no</td>'


def _ratio(m: MetricFidelity) -> str:
    # green when the simulated value lies inside the real repeats' range; no colour otherwise (a ratio has
    # no tolerance of its own: how far off is acceptable depends on the question asked)
    cls = ' class="better"' if m.sim_in_real_range else ""
    return f"<td{cls}>{_num(m.ratio, '.2f')}</td>"


_SHOWN = ("mean_ttft_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "request_throughput")


def _combination_table(record: FidelityRecord) -> str:
    head = ('<th class="t">combination</th><th class="t">simulated as</th><th>real runs</th>'
            '<th title="mean of the real repeats">hit rate real</th>'
            '<th title="min and max of the real repeats">range</th>'
            '<th title="sample standard deviation of the real repeats">std</th><th>hit rate sim</th>'
            '<th title="simulated minus real mean">difference</th>'
            '<th title="max(0.02, range of the real repeats)">tolerance</th><th>within</th>'
            + "".join(f'<th colspan="2" title="real mean · simulated, then simulated / real mean (green: the '
                      f'simulated value lies inside the range of the real repeats)">{_e(METRICS[k][2])}</th>'
                      for k in _SHOWN)
            + '<th class="t" title="completed requests per worker: each real repeat, then the simulator">'
              "requests per worker real · sim</th>")
    rows = []
    for c in record.combinations:
        hit = c.metrics["hit_rate"]
        cells = [f'<td class="t">{_e(c.label)}</td>',
                 f'<td class="t">{_e(c.sim_eviction)} × {_e(c.router)}</td>',
                 f"<td>{c.repeats}</td>", f"<td>{_num(hit.real.mean, '.3f')}</td>",
                 f"<td>{_num(hit.real.min, '.3f')}–{_num(hit.real.max, '.3f')}</td>",
                 f"<td>{_num(hit.real.std, '.3f')}</td>", f"<td>{_num(hit.sim, '.3f')}</td>",
                 f"<td>{_num(hit.difference, '+.3f')}</td>", f"<td>{_num(c.hit_rate_tolerance, '.3f')}</td>",
                 _flag(c.hit_rate_within)]
        for key in _SHOWN:
            m = c.metrics[key]
            spec = ".2f" if key == "request_throughput" else ".1f"
            cells.append(f"<td>{_num(m.real.mean, spec)} · {_num(m.sim, spec)}</td>")
            cells.append(_ratio(m))
        real_split = " ".join("/".join(map(str, counts)) for counts in c.real_requests_per_worker)
        sim_split = "/".join(map(str, c.sim_requests_per_worker)) if c.sim_requests_per_worker else "n/a"
        cells.append(f'<td class="t">{_e(real_split or "n/a")} · {_e(sim_split)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="tablewrap"><table class="fidelity-table"><thead><tr>' + head + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def _rankings_table(record: FidelityRecord) -> str:
    rows = []
    for r in record.rankings:
        rows.append(f'<tr><td class="t">{_e(METRICS[r.metric][2])}</td>'
                    f"<td>{len(r.combinations)}</td><td>{_num(r.kendall_tau_b, '.3f')}</td>"
                    f"<td>{r.resolved_pairs}</td><td>{r.discordant_resolved_pairs}</td>{_flag(r.agrees)}</tr>")
    for o in record.eviction_orders:
        label, higher = METRICS[o.metric][2], METRICS[o.metric][3]
        rows.append(f'<tr><td class="t">{_e(label)} under router {_e(o.router)}: real '
                    f"{_e(order_text(o.evictions, o.real_mean, higher))}, "
                    f"simulated {_e(order_text(o.evictions, o.sim, higher))}"
                    f"</td><td>{len(o.evictions)}</td><td>{_num(o.kendall_tau_b, '.3f')}</td>"
                    f"<td>{o.resolved_pairs}</td><td>{o.discordant_resolved_pairs}</td>{_flag(o.agrees)}</tr>")
    head = ('<th class="t">ranking</th><th>compared</th><th title="real means against simulated values; '
            'n/a when one side is all equal or fewer than two are compared">Kendall tau-b</th>'
            '<th title="pairs whose real ranges do not overlap: every repeat ordered them alike">'
            "resolved pairs</th>"
            '<th title="resolved pairs the simulator orders the other way">reversed</th><th>agrees</th>')
    return ('<div class="tablewrap"><table class="fidelity-ranks"><thead><tr>' + head + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def _verdict_lines(record: FidelityRecord) -> tuple[list[str], bool]:
    v = record.verdict
    word = {True: "yes", False: "no", None: "not judged"}
    lines = [(f"Trusted for this traffic: {word[v.trusted]}. Hit rates within tolerance: "
              f"{word[v.hit_rates_within]}; hit-rate ranking agrees: {word[v.hit_rate_ranking_agrees]}; TTFT "
              f"ranking agrees: {word[v.ttft_ranking_agrees]}; eviction order under each router agrees: "
              f"{word[v.eviction_order_agrees]}.")]
    if not record.complete:
        lines.append("Incomplete: the validation was interrupted; the numbers cover the runs that finished.")
    return lines, v.trusted is True and record.complete


def _notes(lines: list[str], cls: str = "") -> str:
    if not lines:
        return ""
    return f'<div class="notes {cls}">' + "".join(f"<p>{_e(x)}</p>" for x in lines) + "</div>"


def fidelity_html(items: list[FidelityInput]) -> str:
    """The whole section (empty string when no record was found)."""
    if not items:
        return ""
    parts = ['<section id="fidelity"><h2>Simulator fidelity</h2>']
    for k, item in enumerate(items):
        rec, cfg = item.record, item.record.config
        parts.append(f'<div class="fidelity" id="fidelity-{k}"><p><b>{_e(item.path)}</b>: '
                     f"trace {_e(cfg.trace)}, {cfg.repeats} real repeat(s) per combination, simulator "
                     f"profile {_e(cfg.profile.value)} ({_e(cfg.profile.source)}).</p>")
        lines, good = _verdict_lines(rec)
        parts.append(_notes(lines, "ok" if good else ""))
        parts.append(_combination_table(rec))
        parts.append(_rankings_table(rec))
        parts.append(_notes(rec.notes))
        text = json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
        parts.append("<details><summary>simulator configured like the cluster(s)</summary>"
                     f"<pre>{_e(text)}</pre></details></div>")
    parts.append("</section>")
    return "".join(parts)
