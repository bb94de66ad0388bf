#!/usr/bin/python3
"""Renders the dashboard's panels from a live Prometheus into one PNG.

  /usr/bin/python3 deploy/grafana/render_dashboard.py PROM_HOST:PORT OUT.png [MINUTES]

Lays the panels of switchyard-dashboard.json out on Grafana's 24-column
grid and draws each panel's queries over the last MINUTES (default 3) as
Grafana would (time series as lines with the legend format applied, the
heatmap as a layers x time image), with $__rate_interval = 15s and
$__range = the window. Not Grafana: a picture of what the queries return,
for the README. tests/prometheus_live_test.py calls it when
SY_DASHBOARD_PNG names the output. Needs Debian's python3-matplotlib.
"""
import json
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"http://{prom}/api/v1/query_range?{q}", timeout=20) as r:
        body = json.loads(r.read().decode())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, metric):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def scale(unit, values):
    if unit == "percentunit":
        return [v * 100 for v in values], "%"
    if unit == "s":
        return [v * 1000 for v in values], "ms"
    return values, {"reqps": "req/s"}.get(unit, "")


def main():
    prom, out = sys.argv[1], sys.argv[2]
    minutes = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    dash = json.load(open(os.path.join(HERE, "switchyard-dashboard.json")))
    end = time.time()
    start = end - minutes * 60
    step = max(1, int(minutes * 60 / 120))
    window = f"{int(minutes * 60)}s"
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42  # inches per grid row
    fig = plt.figure(figsize=(24, rows * unit_h))
    fig.patch.set_facecolor("#111217")
    for p in panels:
        g = p["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        top = 1 - g["y"] / rows
        height = g["h"] / rows
        if p["type"] == "row":
            fig.text(left + 0.005, top - height * 0.5, p["title"], color="#d8d9da",
                     fontsize=15, fontweight="bold", va="center")
            continue
        ax = fig.add_axes([left + 0.03, top - height + 0.025, width - 0.045, height - 0.045])
        ax.set_facecolor("#181b1f")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        ax.set_title(p["title"], color="#d8d9da", fontsize=10, loc="left")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        suffix = ""
        series = 0
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "15s").replace("$__range", window)
            for r in query_range(prom, expr, start, end, step):
                xs = [(float(v[0]) - end) / 60 for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                ys, suffix = scale(unit, ys)
                if p["type"] == "heatmap":
                    continue
                if all(math.isnan(y) for y in ys):
                    continue
                ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat"), r["metric"]))
                series += 1
        if p["type"] == "heatmap":
            t = p["targets"][0]
            expr = t["expr"].replace("$__rate_interval", "15s").replace("$__range", window)
            result = query_range(prom, expr, start, end, step)
            result.sort(key=lambda r: int(r["metric"].get("expert", "0") or 0))
            grid = [[float(v[1]) for v in r["values"]] for r in result]
            if grid:
                width_ = min(len(row) for row in grid)
                ax.imshow([row[:width_] for row in grid], aspect="auto", cmap="inferno",
                          origin="lower", extent=[-minutes, 0, -0.5, len(grid) - 0.5])
                ax.set_ylabel("expert", color="#8e8e8e", fontsize=7)
                series = len(grid)
        if series == 0:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center",
                    transform=ax.transAxes)
        elif p["type"] != "heatmap" and series <= 8:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235",
                      labelcolor="#d8d9da")
        if suffix:
            ax.set_ylabel(suffix, color="#8e8e8e", fontsize=7)
        ax.set_xlabel("minutes", color="#8e8e8e", fontsize=7)
    fig.savefig(out, dpi=70, facecolor=fig.get_facecolor())
    print(f"render_dashboard: wrote {out} ({len(panels)} panels, last {minutes:g} min)")


if __name__ == "__main__":
    main()
