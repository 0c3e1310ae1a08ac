"""Runs the load benchmark configurations and writes the results, a table and a chart.

Called by scripts/bench with the scratch Redis/Postgres URLs in the environment. Every
gateway request is a correctly signed, distinct video-complete delivery for a scene that
awaits its video, so each takes the whole path: rate-limit check, signature, one transaction
with the delivery row, the scene update and the outbox insert.
"""

import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

MODE, BUILD_JSON = sys.argv[1], sys.argv[2]
SCRATCH = os.environ["BENCH_SCRATCH"]
REDIS = os.environ["SCENEHOOK_TEST_REDIS_URL"]
PG_ADMIN = os.environ["SCENEHOOK_TEST_POSTGRES_URL"]
SECRET = "bench-video-secret-0123456789abcdef0123"
WRK_LUA = os.path.abspath("benches/wrk/video_complete.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# PER_RUN: distinct deliveries seeded per run, embedded / on Postgres. A run that uses them up
# would go on with duplicates, which cost less than a first delivery: run_gateway fails it.
if MODE == "quick":
    CONCURRENCY, DURATION, PER_RUN = [32], 1, (10000, 10000)
elif MODE == "ab":
    CONCURRENCY = [int(os.environ.get("BENCH_AB_CONNECTIONS", "32"))]
    DURATION, PER_RUN = 8, (200000, 100000)
elif MODE == "soak":
    CONCURRENCY, DURATION, PER_RUN = [32], 300, (200000, 200000)
else:
    CONCURRENCY, DURATION, PER_RUN = [8, 32, 64], 10, (250000, 150000)
# Last-frame deliveries per run (`lastframe`, `pglastframe`), embedded / on Postgres: each is a
# project of 10 scenes, so the database holds ten times as many scenes as the run sends
# deliveries (2 million embedded, which SQLite seeds in about half a minute).
LAST_FRAME_PER_RUN = (200000, 65000)


def executables():
    found = {}
    for line in open(BUILD_JSON):
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            found[msg["target"]["name"]] = msg["executable"]
    return found


EXE = executables()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(ready, what, timeout=30):
    """Polls `ready` (a call that raises until the server is up) for up to `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            ready()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer")


def wait_http(url):
    wait_until(lambda: urllib.request.urlopen(url, timeout=1), url)


def wait_listening(port):
    """The references have no health route: until something accepts connections."""
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close(),
               f"port {port}")


def psql(sql, db_url=PG_ADMIN):
    out = subprocess.run(["psql", db_url, "-Atc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def redis_calls():
    """Round trips: every Redis call the gateway makes is an EVALSHA (INFO commandstats also
    counts the commands a script runs inside, which are not round trips)."""
    out = subprocess.run(["redis-cli", "-u", REDIS, "info", "commandstats"], check=True,
                         capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")) and "calls=" in line:
            total += int(line.split("calls=")[1].split(",")[0])
    return total


def cpu_seconds(pid):
    """The process's CPU, and that of the children it has waited for: adnanh/webhook runs a
    command for every request, which is part of what a webhook costs it (the gateway and the
    ceiling start none)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def stat_fields(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def postgres_cpu_seconds():
    """The scratch Postgres's CPU: the postmaster, its live children (backends, WAL writer,
    checkpointer, autovacuum) and the children it has already reaped."""
    postmaster = int(open(os.path.join(SCRATCH, "pg", "postmaster.pid")).readline())
    f = stat_fields(postmaster)
    ticks = sum(int(x) for x in f[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            f = stat_fields(entry)
        except OSError:
            continue
        if int(f[1]) == postmaster:
            ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def redis_cpu_seconds():
    out = subprocess.run(["redis-cli", "-u", REDIS, "info", "cpu"], check=True,
                         capture_output=True, text=True).stdout
    return sum(float(line.split(":")[1]) for line in out.splitlines()
               if line.startswith(("used_cpu_sys:", "used_cpu_user:")))


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(port, connections, deliveries, duration, webhook="video-complete"):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
         "-s", WRK_LUA, f"http://127.0.0.1:{port}", "--", deliveries, webhook],
        check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def prepare(db_url, count, parts, awaiting="video"):
    """`count` deliveries: for scenes awaiting their video, or (`awaiting="last-frame"`) for
    projects midway, each with a scene awaiting its last frame."""
    out = os.path.join(SCRATCH, f"deliveries-{time.time_ns()}")
    subprocess.run([EXE["loadprep"], "--database-url", db_url, "--count", str(count),
                    "--secret", SECRET, "--out", out, "--parts", str(parts),
                    "--awaiting", awaiting],
                   # A hung step fails the run instead of holding CI until its budget ends.
                   check=True, capture_output=True, timeout=600)
    # The seeding's writes (the database, the deliveries) reach the disk now, not in the
    # kernel's writeback ~30 s later, in the middle of a measured run.
    os.sync()
    if db_url.startswith("postgres"):
        # As a server in service does at its checkpoints: the segments the seeding filled are
        # recycled for the run (see preallocate_wal).
        psql("CHECKPOINT", db_url)
    return [f"{out}.{k}" for k in range(parts)] if parts > 1 else [out]


def start_gateway(db_url, redis_url, port, exe=None, sink=None):
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("SCENEHOOK_") or key in ("DATABASE_URL", "REDIS_URL"):
            del env[key]
    env.update({
        "DATABASE_URL": db_url, "REDIS_URL": redis_url, "BIND_ADDR": f"127.0.0.1:{port}",
        "VIDEO_WEBHOOK_SECRET": SECRET, "LAST_FRAME_WEBHOOK_SECRET": SECRET, "RUST_LOG": "warn",
        "SCENEHOOK_RATE_LIMIT__VIDEO_COMPLETE": "1000000000",
        "SCENEHOOK_RATE_LIMIT__LAST_FRAME_COMPLETE": "1000000000",
        "SCENEHOOK_RATE_LIMIT__FLOOD_GUARD_PER_SECOND": "1000000",
        "SCENEHOOK_RATE_LIMIT__FLOOD_GUARD_BURST": "1000000",
        # Ingestion alone is measured: the queued jobs are not sent during the run. They are
        # sent afterwards, to a sink (`run_drain`).
        "SCENEHOOK_OUTBOX__ENABLED": "false" if sink is None else "true",
        "SCENEHOOK_DATABASE__MAX_CONNECTIONS": "8",
    })
    if sink is not None:
        for service in ("VIDEO", "LAST_FRAME", "STITCH", "NOTIFICATION"):
            env[f"SCENEHOOK_SERVICES__{service}__URL"] = f"http://127.0.0.1:{sink}"
    proc = subprocess.Popen([exe or EXE["scenehook"]], env=env, cwd=SCRATCH,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def accepted(port, webhook="video-complete"):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    counts = {"accepted": 0.0, "duplicate": 0.0}
    for line in text.splitlines():
        if line.startswith("scenehook_webhooks_total{") and f'endpoint="{webhook}"' in line:
            for outcome in counts:
                if f'outcome="{outcome}"' in line:
                    counts[outcome] += float(line.rsplit(" ", 1)[1])
    return counts


def outbound_requests(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("scenehook_outbound_requests_total{"))


def run_drain(name, db_url, redis_url):
    """The outbox after an ingestion run: the gateway restarted with its outbox on, sending the
    jobs the run queued to a sink that accepts every call at once (the ceiling's `sink`), at the
    configured 8 calls in flight per service, from its start for DURATION seconds (a quick
    run's queue empties sooner)."""
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen([EXE["ceiling"], "sink", f"127.0.0.1:{sink_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(sink_port)
    proc = start_gateway(db_url, redis_url, port, sink=sink_port)
    before, before_cpu = outbound_requests(port), cpu_seconds(proc.pid)
    before_pg_cpu = postgres_cpu_seconds() if db_url.startswith("postgres") else 0
    started = time.monotonic()
    # Read once at the end: a scrape counts the jobs by status, a query that would hold the
    # pooled SQLite connection the lanes write through.
    time.sleep(DURATION)
    sent = outbound_requests(port) - before
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(proc.pid) - before_cpu
    pg_cpu = postgres_cpu_seconds() - before_pg_cpu if db_url.startswith("postgres") else 0
    row = {"config": name, "kind": "drain", "jobs_per_s": sent / elapsed,
           "jobs": sent, "cpu_us_per_job": cpu * 1e6 / max(sent, 1)}
    if db_url.startswith("postgres"):
        row["pg_cpu_us_per_job"] = pg_cpu * 1e6 / max(sent, 1)
    for p in (proc, sink):
        p.terminate()
        p.wait()
    if not sent:
        sys.exit(f"bench: the outbox of {name} sent nothing in {DURATION} s")
    return row


def pg_statements(db_url):
    if not db_url.startswith("postgres"):
        return None
    return int(psql("SELECT COALESCE(SUM(calls),0) FROM pg_stat_statements", db_url) or 0)


@functools.cache
def preallocate_wal():
    """Gives the scratch Postgres the WAL segments a server in service has. It recycles its
    old segments at each checkpoint (up to `min_wal_size`, 2 GB here), where a new server
    creates each 16 MiB segment when the WAL reaches it: zero-filled and synced inside some
    commit, which then holds every batch for 30-50 ms (the benchmark's p99 at 32 connections
    was 33-36 ms with them, 6-7 ms without; docs/performance-log.md, *New WAL segments*).
    Fills the segments once, by switching to a new one after a one-row insert, and lets a
    checkpoint recycle them; once per scratch server."""
    segments = 8 if MODE == "quick" else 128
    script = ["CREATE TABLE wal_warmup (x int);"]
    script += ["INSERT INTO wal_warmup VALUES (1); SELECT pg_switch_wal();"] * segments
    script += ["DROP TABLE wal_warmup;", "CHECKPOINT;"]
    subprocess.run(["psql", PG_ADMIN, "-qX", "-v", "ON_ERROR_STOP=1", "-o", os.devnull],
                   input="\n".join(script), text=True, check=True, timeout=300)


def fresh_database():
    preallocate_wal()
    name = f"bench_{time.time_ns()}"
    psql(f"CREATE DATABASE {name}")
    base = PG_ADMIN.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", url)
    return url


def run_ceiling(name, extra):
    port = free_port()
    return run_reference(name, port, [EXE["ceiling"], "serve", f"127.0.0.1:{port}",
                                      "--secret", SECRET] + extra, redis=bool(extra))


def run_adnanh_webhook():
    """adnanh/webhook (Debian's `webhook`), the issue's reference for a webhook server: the
    same signed deliveries, checked by its HMAC-SHA256 rule on the same header, each running
    /bin/true. It answers before its command has run and stores nothing."""
    hooks = os.path.join(SCRATCH, "adnanh-webhook-hooks.json")
    with open(hooks, "w") as f:
        json.dump([{
            "id": "video-complete",
            "execute-command": "/bin/true",
            "response-message": "accepted",
            "trigger-rule": {"match": {
                "type": "payload-hmac-sha256", "secret": SECRET,
                "parameter": {"source": "header", "name": "X-Webhook-Signature"}}},
        }], f)
    port = free_port()
    return run_reference("adnanh/webhook 2.8", port,
                         ["webhook", "-hooks", hooks, "-ip", "127.0.0.1", "-port", str(port),
                          "-urlprefix", "api/webhooks"], redis=False)


def run_reference(name, port, command, redis):
    """A server that is not the gateway, started from `command`, driven like the gateway with
    5,000 signed deliveries sent again and again (it keeps no state that would tell them
    apart)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    deliveries = prepare(f"sqlite://{SCRATCH}/ceiling-{time.time_ns()}.db?mode=rwc", 5000, 1)[0]
    check_verifies(name, port, deliveries)
    rows = []
    for c in CONCURRENCY:
        before_cpu, before_redis = cpu_seconds(proc.pid), redis_calls()
        before_redis_cpu = redis_cpu_seconds()
        r = wrk(port, c, deliveries, DURATION)
        per_1000 = 1e6 / max(r["requests"], 1)
        r.update(config=name, connections=c,
                 cpu_ms_per_1000=(cpu_seconds(proc.pid) - before_cpu) * per_1000,
                 redis_per_webhook=(redis_calls() - before_redis) / max(r["requests"], 1))
        if redis:
            r["redis_cpu_ms_per_1000"] = (redis_cpu_seconds() - before_redis_cpu) * per_1000
        rows.append(r)
    for r in rows:
        r["peak_rss_mib"] = peak_rss_mib(proc.pid)
    proc.terminate()
    proc.wait()
    return fail_if_unfit(rows)


def check_verifies(name, port, deliveries):
    """A reference that let a forged signature through would be measured without the HMAC
    check: one delivery with its signature's last digit changed must be refused (the gateway
    and the ceiling answer 401, adnanh/webhook 500), and the same delivery signed accepted."""
    with open(deliveries) as f:
        body, signature = f.readline().rstrip("\n").split("\t")
    forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")

    def status(sig):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/webhooks/video-complete", data=body.encode(),
            headers={"Content-Type": "application/json", "X-Webhook-Signature": sig})
        try:
            return urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    forged_status, signed_status = status(forged), status(signature)
    if not (forged_status >= 400 and 200 <= signed_status < 300):
        sys.exit(f"bench: {name} answered a forged signature {forged_status} and a valid one "
                 f"{signed_status}")


def fail_if_unfit(rows):
    """Every mode's runs must have answered, and answered 2xx only."""
    bad = [r for r in rows if r.get("non_2xx") or r["requests"] == 0]
    if bad:
        sys.exit(f"bench: failed runs: {bad}")
    return rows


def run_gateway(name, db_url, redis_url, instances, exe=None, webhook="video-complete"):
    runs = len(CONCURRENCY)
    backend = 0 if db_url.startswith("sqlite") else 1
    per_run, awaiting = PER_RUN[backend], "video"
    if webhook == "last-frame-complete":
        # A project of 10 scenes per delivery: at most LAST_FRAME_PER_RUN of them.
        per_run, awaiting = min(per_run, LAST_FRAME_PER_RUN[backend]), "last-frame"
    files = prepare(db_url, per_run * runs * instances, runs * instances, awaiting)
    ports = [free_port() for _ in range(instances)]
    procs = [start_gateway(db_url, redis_url, p, exe) for p in ports]
    rows = []
    for k, c in enumerate(CONCURRENCY):
        before = [accepted(p, webhook) for p in ports]
        before_cpu = sum(cpu_seconds(p.pid) for p in procs)
        before_redis = redis_calls() if redis_url else 0
        before_sql = pg_statements(db_url)
        before_pg_cpu = postgres_cpu_seconds() if db_url.startswith("postgres") else 0
        before_redis_cpu = redis_cpu_seconds() if redis_url else 0
        threads = []
        results = [None] * instances
        import threading
        for i, port in enumerate(ports):
            def go(i=i, port=port):
                results[i] = wrk(port, max(c // instances, 1), files[k * instances + i], DURATION,
                                 webhook)
            threads.append(threading.Thread(target=go))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = [accepted(p, webhook) for p in ports]
        done = sum(a["accepted"] - b["accepted"] for a, b in zip(after, before))
        dup = sum(a["duplicate"] - b["duplicate"] for a, b in zip(after, before))
        total = sum(r["requests"] for r in results)
        row = {
            "config": name, "connections": c,
            "rps": sum(r["rps"] for r in results),
            "requests": total, "accepted": done, "duplicates": dup,
            "non_2xx": sum(r["non_2xx"] for r in results),
            "p50_us": max(r["p50_us"] for r in results),
            "p99_us": max(r["p99_us"] for r in results),
            "p999_us": max(r["p999_us"] for r in results),
            "cpu_ms_per_1000": (sum(cpu_seconds(p.pid) for p in procs) - before_cpu) * 1e6 / max(total, 1),
            "redis_per_webhook": ((redis_calls() - before_redis) / max(total, 1)) if redis_url else 0.0,
        }
        if db_url.startswith("postgres"):
            row["pg_cpu_ms_per_1000"] = (postgres_cpu_seconds() - before_pg_cpu) * 1e6 / max(total, 1)
        if redis_url:
            row["redis_cpu_ms_per_1000"] = (redis_cpu_seconds() - before_redis_cpu) * 1e6 / max(total, 1)
        after_sql = pg_statements(db_url)
        if after_sql is not None:
            # The two pg_stat_statements reads themselves are subtracted.
            row["sql_per_webhook"] = (after_sql - before_sql - 1) / max(total, 1)
        rows.append(row)
    for r in rows:
        r["peak_rss_mib"] = max(peak_rss_mib(p.pid) for p in procs)
    for p in procs:
        p.terminate()
        p.wait()
    for r in rows:
        if r["duplicates"]:
            sys.exit(f"bench: {name} at {r['connections']} connections used up its "
                     f"{per_run:,} distinct deliveries and sent {r['duplicates']:,.0f} again; "
                     f"seed more (PER_RUN in scripts/bench.py)")
    rows = fail_if_unfit(rows)
    if instances == 1 and webhook == "video-complete" and MODE != "ab":
        rows.append(run_drain(name, db_url, redis_url))
    return rows


def soak():
    """Both configurations in turn, each for DURATION at 32 connections, RSS sampled every
    10 s: its distinct deliveries first, then the same again (wrk's script wraps around),
    answered as duplicates."""
    return {
        "Postgres + Redis": soak_one(fresh_database(), REDIS, PER_RUN[1]),
        "embedded (SQLite + in-process)": soak_one(sqlite_url(), "", PER_RUN[0]),
    }


def soak_one(db_url, redis_url, deliveries):
    files = prepare(db_url, deliveries, 1)
    port = free_port()
    proc = start_gateway(db_url, redis_url, port)
    wrk_proc = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{DURATION}s", "-s", WRK_LUA,
                                 f"http://127.0.0.1:{port}", "--", files[0]],
                                stdout=subprocess.PIPE, text=True)
    samples = []
    start = time.time()
    while wrk_proc.poll() is None:
        samples.append((round(time.time() - start), rss_mib(proc.pid)))
        time.sleep(10)
    out = wrk_proc.stdout.read()
    peak = peak_rss_mib(proc.pid)
    proc.terminate()
    proc.wait()
    return {"samples": samples, "peak_rss_mib": peak,
            "wrk": json.loads(out.strip().splitlines()[-1])}


def sqlite_url():
    return f"sqlite://{SCRATCH}/bench-{time.time_ns()}.db?mode=rwc"


def remove_sqlite(db_url):
    path = db_url.removeprefix("sqlite://").split("?")[0]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


# The configurations `--ab` compares: key -> (name, Postgres + Redis?, webhook).
AB_CONFIGS = {
    "embedded": ("embedded (SQLite + in-process)", False, "video-complete"),
    "pg": ("Postgres + Redis", True, "video-complete"),
    "lastframe": ("embedded, last-frame callbacks", False, "last-frame-complete"),
    "pglastframe": ("Postgres + Redis, last-frame", True, "last-frame-complete"),
}


def ab(baseline, rounds):
    """One build against another where this machine's drift allows it: alternating 8 s runs
    at 32 connections, each on a freshly seeded database, baseline first in every pair."""
    only = set(filter(None, os.environ.get("BENCH_ONLY", "embedded").split(",")))
    for key, (name, shared, webhook) in AB_CONFIGS.items():
        if key not in only:
            continue
        pairs = []
        for round_ in range(rounds):
            pair = []
            for exe in (baseline, EXE["scenehook"]):
                db_url = fresh_database() if shared else sqlite_url()
                row = run_gateway(name, db_url, REDIS if shared else "", 1, exe, webhook)[0]
                if db_url.startswith("sqlite"):
                    remove_sqlite(db_url)
                pair.append(row)
            pairs.append(pair)
            old, new = pair
            redis_cpu = lambda r: (f"{r['redis_cpu_ms_per_1000']:.0f} us Redis CPU, "
                                   if shared else "")
            side = lambda r: (f"{r['requests']:8,} requests (p99 {r['p99_us'] / 1000:5.2f} ms, "
                              f"{r['cpu_ms_per_1000']:.0f} us CPU, {redis_cpu(r)}"
                              f"{r['redis_per_webhook']:.3f} Redis/webhook, "
                              f"peak {r['peak_rss_mib']:.1f} MiB)")
            print(f"{name}, pair {round_ + 1}: baseline {side(old)}, this build {side(new)}: "
                  f"{new['requests'] / old['requests'] - 1:+.1%}", flush=True)
        ratios = [new["requests"] / old["requests"] for old, new in pairs]
        ahead = sum(r > 1.01 for r in ratios)
        behind = sum(r < 0.99 for r in ratios)
        mean = sum(new["requests"] for _, new in pairs) / sum(old["requests"] for old, _ in pairs)
        print(f"{name}: this build {mean - 1:+.1%} over {rounds} pairs "
              f"(ahead by more than 1 % in {ahead}, behind by more than 1 % in {behind})")


def main():
    os.makedirs("docs/bench", exist_ok=True)
    if MODE == "ab":
        baseline = os.environ["BENCH_AB_BASELINE"]
        ab(os.path.abspath(baseline), int(os.environ.get("BENCH_AB_ROUNDS", "5")))
        return
    if MODE == "soak":
        results = soak()
        with open("docs/bench/soak.json", "w") as f:
            json.dump(results, f, indent=1)
        for name, result in results.items():
            rss = [mib for _, mib in result["samples"][1:]] or [0.0]
            print(f"soak, {name}: RSS {rss[0]:.1f} MiB after 10 s, {min(rss):.1f}-{max(rss):.1f} "
                  f"MiB from then on, {rss[-1]:.1f} MiB at the end "
                  f"(peak {result['peak_rss_mib']:.1f}), {result['wrk']['requests']} requests, "
                  f"p99 {result['wrk']['p99_us'] / 1000:.1f} ms")
        failed = [name for name, result in results.items() if result["wrk"]["non_2xx"]]
        if failed:
            sys.exit(f"bench: soak answers other than 2xx in {failed}")
        return
    # BENCH_ONLY=embedded,pg (any of: ceiling, evalsha, webhook, embedded, pg, pg2) runs a
    # subset while iterating; the published table always comes from a full run. `lastframe` (embedded,
    # last-frame callbacks instead of video ones) and `pglastframe` (the same on Postgres +
    # Redis) run only when named there.
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    wanted = lambda key: not only or key in only
    rows = []
    if wanted("ceiling"):
        rows += run_ceiling("ceiling", [])
    if wanted("evalsha"):
        rows += run_ceiling("ceiling + EVALSHA", ["--redis", REDIS])
    if wanted("webhook"):
        rows += run_adnanh_webhook()
    if wanted("embedded"):
        rows += run_gateway("embedded (SQLite + in-process)", sqlite_url(), "", 1)
    if wanted("pg"):
        rows += run_gateway("Postgres + Redis", fresh_database(), REDIS, 1)
    if wanted("pg2"):
        rows += run_gateway("2 instances, Postgres + Redis", fresh_database(), REDIS, 2)
    if "lastframe" in only:
        rows += run_gateway("embedded, last-frame callbacks", sqlite_url(), "", 1,
                            webhook="last-frame-complete")
    if "pglastframe" in only:
        rows += run_gateway("Postgres + Redis, last-frame", fresh_database(), REDIS, 1,
                            webhook="last-frame-complete")
    if MODE == "quick" or only:
        for r in rows:
            if r.get("kind") == "drain":
                print(f"{r['config']:34} outbox drain {r['jobs_per_s']:9.0f} jobs/s  "
                      f"cpu {r['cpu_us_per_job']:6.0f} us/job  "
                      f"postgres cpu {r.get('pg_cpu_us_per_job', 0):.0f} us/job")
                continue
            print(f"{r['config']:34} c={r['connections']:3} {r['rps']:9.0f} req/s "
                  f"p99 {r['p99_us'] / 1000:6.2f} ms  cpu {r['cpu_ms_per_1000']:6.0f} ms/1000  "
                  f"sql {r.get('sql_per_webhook', 0):.2f}/webhook  "
                  f"postgres cpu {r.get('pg_cpu_ms_per_1000', 0):.0f}  "
                  f"redis cpu {r.get('redis_cpu_ms_per_1000', 0):.0f} ms/1000  "
                  f"redis {r['redis_per_webhook']:.3f}/webhook  "
                  f"peak rss {r['peak_rss_mib']:.1f} MiB")
        print("bench smoke: ok")
        return
    json.dump(rows, open("docs/bench/results.json", "w"), indent=1)
    subprocess.run([sys.executable, "scripts/bench_report.py"], check=True)


main()
