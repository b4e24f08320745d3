"""Turns chatd-load's JSON lines into the Markdown table of Docs/PERFORMANCE.md: median and min–max per figure."""
import json
import statistics
import sys

results_path, machine, day, command = sys.argv[1:5]
rows = [json.loads(line) for line in open(results_path) if line.strip()]

FIGURES = {
    "latency": [("p50_ms", "p50 latency, ms"), ("p99_ms", "p99 latency, ms"), ("max_ms", "max latency, ms"),
                ("server_cpu_us_per_msg", "chatd CPU per delivered message, µs"), ("lost", "lost")],
    "throughput": [("msgs_per_s", "delivered messages/s"), ("server_cpu_us_per_msg", "chatd CPU per delivered message, µs"),
                   ("lost", "lost")],
    "drain": [("seconds_to_last", "time to the last message, s"), ("msgs_per_s", "messages/s"),
              ("server_cpu_us_per_msg", "chatd CPU per message, µs"), ("lost", "lost")],
    "connections": [("rss_kb_per_conn", "chatd RSS per idle socket, KB"), ("server_cpu_us_per_conn", "chatd CPU per connect, µs")],
    "restart": [("restart_ms", "start to listening after kill -9, ms")],
}


def fmt(value):
    if value is None:
        return "–"
    if abs(value) >= 100:
        return "{:,.0f}".format(value)
    if abs(value) >= 10:
        return "{:.1f}".format(value)
    return "{:.2f}".format(value)


lines = [
    "Measured {} on {} with `{}` (chatd release build, LOG_LEVEL=warning; the load generator runs on the same machine)."
    .format(day, machine, command),
    "",
    "| mode | scenario | figure | median | min–max | runs |",
    "| --- | --- | --- | ---: | ---: | ---: |",
]
order = []
for row in rows:
    key = (row["mode"], row["name"])
    if key not in order:
        order.append(key)
for mode, name in order:
    group = [r for r in rows if r["mode"] == mode and r["name"] == name]
    kind = group[0].get("scenario", "restart")
    for field, label in FIGURES[kind]:
        values = [r[field] for r in group if r.get(field) is not None]
        if not values:
            continue
        lines.append("| {} | {} | {} | {} | {}–{} | {} |".format(
            mode, name, label, fmt(statistics.median(values)), fmt(min(values)), fmt(max(values)), len(values)))
print("\n".join(lines))
