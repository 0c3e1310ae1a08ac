"""Turns docs/bench/results.json into docs/bench/table.md and docs/bench/chart.png."""

import json
import subprocess
import sys

results = json.load(open("docs/bench/results.json"))
rows = [r for r in results if r.get("kind") != "drain"]
drains = [r for r in results if r.get("kind") == "drain"]
ref = {r["connections"]: r["rps"] for r in rows if r["config"] == "ceiling"}
ref_redis = {r["connections"]: r["rps"] for r in rows if r["config"] == "ceiling + EVALSHA"}

lines = [
    "| configuration | conns | req/s | vs ceiling | vs ceiling + EVALSHA | p50 ms | p99 ms | p99.9 ms "
    "| gateway CPU ms / 1000 | Postgres CPU ms / 1000 | Redis CPU ms / 1000 | peak RSS MiB "
    "| Redis round trips / webhook | SQL stmts / webhook |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    c = r["connections"]
    sql = f"{r['sql_per_webhook']:.1f}" if "sql_per_webhook" in r else "—"
    pg_cpu = f"{r['pg_cpu_ms_per_1000']:.0f}" if "pg_cpu_ms_per_1000" in r else "—"
    redis_cpu = f"{r['redis_cpu_ms_per_1000']:.0f}" if "redis_cpu_ms_per_1000" in r else "—"
    lines.append(
        f"| {r['config']} | {c} | {r['rps']:,.0f} | {r['rps'] / ref[c]:.0%} | "
        f"{r['rps'] / ref_redis[c]:.0%} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
        f"{r['p999_us'] / 1000:.2f} | {r['cpu_ms_per_1000']:.0f} | {pg_cpu} | {redis_cpu} | "
        f"{r['peak_rss_mib']:.1f} | "
        f"{r['redis_per_webhook']:.2f} | {sql} |")
lines += [
    "",
    "The outbox after each run, sending the jobs the run queued to a sink (8 calls in flight "
    "per service):",
    "",
    "| configuration | jobs sent / s | gateway CPU µs / job | Postgres CPU µs / job |",
    "|---|---|---|---|",
]
for r in drains:
    pg_cpu = f"{r['pg_cpu_us_per_job']:.0f}" if "pg_cpu_us_per_job" in r else "—"
    lines.append(f"| {r['config']} | {r['jobs_per_s']:,.0f} | {r['cpu_us_per_job']:.0f} | {pg_cpu} |")
open("docs/bench/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

try:
    import matplotlib
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "matplotlib"], check=True)
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
for config in dict.fromkeys(r["config"] for r in rows):
    points = [r for r in rows if r["config"] == config]
    xs = [p["connections"] for p in points]
    left.plot(xs, [p["rps"] for p in points], marker="o", label=config)
    right.plot(xs, [p["p99_us"] / 1000 for p in points], marker="o", label=config)
left.set(title="Throughput", xlabel="connections", ylabel="requests / s")
right.set(title="p99 latency", xlabel="connections", ylabel="ms", yscale="log")
for ax in (left, right):
    ax.grid(alpha=0.3)
# Below both plots, where it covers no line.
handles, labels = left.get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
fig.tight_layout(rect=(0, 0.12, 1, 1))
fig.savefig("docs/bench/chart.png", dpi=110)
print("wrote docs/bench/table.md and docs/bench/chart.png")
