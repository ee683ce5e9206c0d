#!/usr/bin/env python3
"""check_capacity_model.py — bench/capacity_model.py on hand-made measurements whose answers
are computed by hand: the cost sum, the log-log interpolation of the slice cost (and its
extension beyond the measured sizes), the replica bound, hosts and replicas for a target, and
the --check errors against a run_cluster.sh run.

usage: check_capacity_model.py SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

# Slices of a 2,000-sticker corpus: S(1000) = 100 us, S(2000) = 200 us (S grows as n^1).
# Fan-out 1: shards 150 us per query, search 100 -> O(1) = 50; broker 30; client 10.
# Fan-out 2: shards 280 us per query (140 each), search 80 -> O(2) = 60; broker 50.
MEASURED = [
    {"bench": "shard", "shards": 1, "corpus_stickers": 2000, "slice_stickers": 2000,
     "cpu_us_per_query": 200},
    {"bench": "shard", "shards": 2, "corpus_stickers": 2000, "slice_stickers": 1000,
     "cpu_us_per_query": 100},
    {"bench": "fanout", "shards": 1, "broker_cpu_us_per_query": 30,
     "shards_cpu_us_per_query": 150, "shard_search_cpu_us_per_query": 100,
     "client_cpu_us_per_query": 10},
    {"bench": "fanout", "shards": 2, "broker_cpu_us_per_query": 50,
     "shards_cpu_us_per_query": 280, "shard_search_cpu_us_per_query": 80,
     "client_cpu_us_per_query": 10},
]
# A 2-shard run on 2 cores that got 0.95 of them: 2,500 QPS; 1,000 searches cost 0.41 s.
RUN = [
    {"bench": "cluster", "connections": 1, "qps": 900},
    {"bench": "cluster", "connections": 16, "qps": 2500},
    {"bench": "cluster_cpu", "shards": 2, "searches": 1000, "cpus_allowed": "0,1",
     "cores_used": 0.95, "broker_cpu_s": 0.05, "shards_cpu_s": 0.33, "client_cpu_s": 0.03,
     "broker_cpu_us_per_query": 50, "shards_cpu_us_per_query": 330,
     "client_cpu_us_per_query": 30},
]

failures = []


def expect(what, got, want):
    ok = abs(got - want) <= 1e-6 * max(1.0, abs(want)) if isinstance(want, float) else got == want
    if not ok:
        failures.append(f"{what}: got {got!r}, want {want!r}")


def main():
    model = os.path.join(sys.argv[1], "bench", "capacity_model.py")
    with tempfile.TemporaryDirectory() as d:
        m, r = os.path.join(d, "m.jsonl"), os.path.join(d, "run.jsonl")
        with open(m, "w") as f:
            f.write("not json, ignored\n" + "".join(json.dumps(x) + "\n" for x in MEASURED))
        with open(r, "w") as f:
            f.write("".join(json.dumps(x) + "\n" for x in RUN))

        def run(*args):
            out = subprocess.run([sys.executable, model, "--measured", m, "--json", *args],
                                 check=True, capture_output=True, text=True).stdout
            return json.loads(out)

        p = run("--shards", "1,2", "--cores", "2", "--check", r)
        one, two = p["predictions"]
        expect("N=1 cpu", one["cpu_us_per_query"], 280.0)  # 200 + 50 + 30
        expect("N=1 qps", one["qps"], round(2e6 / 280, 1))
        expect("N=2 cpu", two["cpu_us_per_query"], 370.0)  # 2 * (100 + 60) + 50
        expect("N=2 qps", two["qps"], round(2e6 / 370, 1))
        expect("N=2 bound", two["bound"], "cpu")
        c = p["checks"][0]
        expect("check shards", c["shards"], 2)
        expect("check connections", c["connections"], 16)
        expect("check predicted cpu", c["predicted_cpu_us_per_query"], 380.0)  # + client 10
        expect("check measured cpu", c["measured_cpu_us_per_query"], 410.0)
        expect("check cpu error", c["error_pct_cpu"], round(100 * (380 - 410) / 410, 1))
        expect("check allowed", c["predicted_qps_allowed"], round(2e6 / 380, 1))
        expect("check allowed error", c["error_pct_allowed"],
               round(100 * (2e6 / 380 - 2500) / 2500, 1))
        expect("check used", c["predicted_qps_used"], round(0.95e6 / 380, 1))

        # Slices beyond the measured sizes: S(8000) = 800 (log-log line), S(2000) at 4,000.
        expect("extend", run("--shards", "1", "--corpus", "8000")["predictions"][0]
               ["cpu_us_per_query"], 880.0)
        expect("interpolate", run("--shards", "2", "--corpus", "4000")["predictions"][0]
               ["cpu_us_per_query"], 570.0)
        # One replica of one worker: 1e6 / (200 + 50) before 10 hosts x 4 cores run out.
        q = run("--shards", "1", "--hosts", "10", "--cores", "4", "--workers", "1")
        expect("replica bound", q["predictions"][0]["qps"], 4000.0)
        expect("replica bound name", q["predictions"][0]["bound"], "shard replicas")
        # 10,000 QPS at 50% of 2-core hosts: ceil(10000 * 280 / 1e6) hosts,
        # ceil(10000 * 250 / 1e6) replicas.
        t = run("--shards", "1", "--cores", "2", "--utilization", "0.5", "--target-qps", "10000")
        expect("hosts for target", t["predictions"][0]["hosts_for_target"], 3)
        expect("replicas for target", t["predictions"][0]["replicas_for_target"], 3)
    for f in failures:
        print("check_capacity_model: FAIL:", f)
    print(f"check_capacity_model: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
