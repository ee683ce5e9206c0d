#!/usr/bin/env python3
"""capacity_model.py — cluster QPS for H hosts x C cores, from measured CPU costs per query.

Every number comes from the JSON lines of bench/run_capacity.sh (--measured); nothing is typed
in. A query costs, in CPU time:

    cpu(N) = N * (S(corpus / N) + O(N)) + B(N)

  S(n)  one shard's search on a slice of n stickers: bench_shard's CPU us per query on slice 0
        of N = 1, 2, 4, 8, 16 slices of the full corpus, interpolated piecewise-linearly in
        log(n) -> log(S) (the end segments extend beyond the measured sizes);
  O(N)  a shard's cost per request beyond its search (ZeroMQ, protobuf, its threads): from the
        fan-out runs on small slices, shards' CPU per query / N - bench_shard's search on the
        same slice;
  B(N)  the broker's CPU per query at fan-out N (HTTP, analysis, profile, encode, N round
        trips, decode, merge);
        both measured at N = 1, 2, 4, 8, 16 and interpolated piecewise-linearly in N (the last
        segment extends beyond 16);
  K     the load generator's CPU per query (bench_cluster), only when it shares the cores, as
        in the --check of a run_cluster.sh run.

A cluster of N shards x r replicas (W workers each) on H hosts x C cores, load spread evenly:

    QPS = min(H * C / cpu(N),                 every core busy
              r * min(W, C) / (S + O(N)))     one shard's replicas saturated

Replicas do not change cpu(N) (a query visits one replica per shard); they raise the second
bound and buy availability. Latency is not modelled: the bounds are throughput at 100% CPU;
size for the headroom you want (--utilization).

usage:
  capacity_model.py --measured M.jsonl [--shards 1,2,4,8,16] [--replicas R] [--hosts H]
                    [--cores C] [--workers W] [--corpus STICKERS] [--utilization U]
                    [--target-qps Q] [--check RUN_CLUSTER.jsonl ...] [--json]
--check compares the model with run_cluster.sh output (its cluster_cpu line and its
bench_cluster levels; run it with CONNECTIONS=16 SHARD_FLAGS="--rcache-bytes 0", pinned with
taskset): predicted against measured QPS on the cores the run was allowed, on the cores it
actually got (CPU/wall: a shared machine gives less), and CPU per query, errors in %.
"""
import argparse
import json
import math
import statistics
import sys


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


class Model:
    def __init__(self, measured):
        shard = sorted((m for m in measured if m.get("bench") == "shard"),
                       key=lambda m: m["slice_stickers"])
        fan = sorted((m for m in measured if m.get("bench") == "fanout"),
                     key=lambda m: m["shards"])
        if len(shard) < 2 or len(fan) < 2:
            sys.exit("capacity_model: need >= 2 'shard' and >= 2 'fanout' lines in --measured")
        self.corpus = shard[0].get("corpus_stickers") or shard[-1]["slice_stickers"]
        self.s_pts = [(math.log(m["slice_stickers"]), math.log(m["cpu_us_per_query"]))
                      for m in shard]
        self.shard_lines = shard
        self.o_pts = [(m["shards"], max(0.0, m["shards_cpu_us_per_query"] / m["shards"]
                                        - m["shard_search_cpu_us_per_query"])) for m in fan]
        self.b_pts = [(m["shards"], m["broker_cpu_us_per_query"]) for m in fan]
        self.K = statistics.median(m["client_cpu_us_per_query"] for m in fan)
        self.fan_lines = fan

    def S(self, n):
        """Shard search CPU us per query on a slice of n stickers."""
        return math.exp(interp(self.s_pts, math.log(n)))

    def O(self, n):
        """A shard's CPU us per request beyond its search, at fan-out n."""
        return max(0.0, interp(self.o_pts, n))

    def B(self, n):
        """The broker's CPU us per query at fan-out n."""
        return max(0.0, interp(self.b_pts, n))

    def cpu(self, n, corpus):
        """CPU us per query of an n-shard cluster over `corpus` stickers, and its parts."""
        s = self.S(corpus / n)
        return n * (s + self.O(n)) + self.B(n), s

    def qps(self, n, corpus, replicas, hosts, cores, workers, util):
        total, s = self.cpu(n, corpus)
        cpu_bound = hosts * cores * util * 1e6 / total
        shard_bound = replicas * min(workers, cores) * util * 1e6 / (s + self.O(n))
        return {"shards": n, "replicas": replicas, "hosts": hosts, "cores": cores,
                "workers": workers, "corpus_stickers": corpus, "utilization": util,
                "slice_stickers": round(corpus / n),
                "shard_search_us": round(s, 1), "shard_wire_us": round(self.O(n), 1),
                "broker_us": round(self.B(n), 1), "cpu_us_per_query": round(total, 1),
                "qps": round(min(cpu_bound, shard_bound), 1),
                "qps_per_core": round(1e6 / total, 1),
                "bound": "cpu" if cpu_bound <= shard_bound else "shard replicas",
                "shard_processes": n * replicas}


def interp(pts, x):
    """Piecewise-linear through pts (sorted by x); the end segments extend beyond them."""
    i = 0
    while i < len(pts) - 2 and x > pts[i + 1][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def cores_of(spec):
    """Count the CPUs of a taskset list such as '0', '0,1' or '0-3,6'."""
    n = 0
    for part in (spec or "").split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part.strip():
            n += 1
    return n


def err_pct(pred, meas):
    return round(100.0 * (pred - meas) / meas, 1) if meas else None


def check(model, path):
    lines = load(path)
    cpu = next((m for m in lines if m.get("bench") == "cluster_cpu"), None)
    levels = [m for m in lines if m.get("bench") == "cluster"]
    if not cpu or not levels or cpu.get("searches", 0) <= 0:
        sys.exit(f"capacity_model: {path}: no cluster_cpu line with searches, or no cluster level")
    top = max(levels, key=lambda m: m["connections"])
    n = cpu["shards"]
    total, _ = model.cpu(n, model.corpus)
    per_q = total + model.K  # the load generator shares the cores here
    allowed = cores_of(cpu.get("cpus_allowed"))
    meas_cpu = (cpu["broker_cpu_s"] + cpu["shards_cpu_s"] + cpu["client_cpu_s"]) * 1e6 \
        / cpu["searches"]
    return {"run": path, "shards": n, "cores_allowed": allowed,
            "cores_used": round(cpu["cores_used"], 3), "connections": top["connections"],
            "measured_qps": top["qps"],
            "predicted_qps_allowed": round(allowed * 1e6 / per_q, 1),
            "error_pct_allowed": err_pct(allowed * 1e6 / per_q, top["qps"]),
            "predicted_qps_used": round(cpu["cores_used"] * 1e6 / per_q, 1),
            "error_pct_used": err_pct(cpu["cores_used"] * 1e6 / per_q, top["qps"]),
            "measured_cpu_us_per_query": round(meas_cpu, 1),
            "predicted_cpu_us_per_query": round(per_q, 1),
            "error_pct_cpu": err_pct(per_q, meas_cpu),
            "measured_parts_us": {"broker": round(cpu["broker_cpu_us_per_query"], 1),
                                  "shards": round(cpu["shards_cpu_us_per_query"], 1),
                                  "client": round(cpu["client_cpu_us_per_query"], 1)},
            "predicted_parts_us": {"broker": round(model.B(n), 1),
                                   "shards": round(total - model.B(n), 1),
                                   "client": round(model.K, 1)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measured", required=True, help="run_capacity.sh output (JSON lines)")
    ap.add_argument("--shards", default="1,2,4,8,16")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--cores", type=int, default=1, help="cores per host")
    ap.add_argument("--workers", type=int, default=0, help="workers per shard (0: = cores)")
    ap.add_argument("--corpus", type=int, default=0, help="stickers (0: the measured corpus)")
    ap.add_argument("--utilization", type=float, default=1.0,
                    help="share of each core to plan for (headroom), 0..1")
    ap.add_argument("--target-qps", type=float, default=0,
                    help="also print the hosts needed for this QPS")
    ap.add_argument("--check", action="append", default=[],
                    help="run_cluster.sh output to compare with (repeatable)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    m = Model(load(a.measured))
    corpus = a.corpus or m.corpus
    workers = a.workers or a.cores
    out = {"model": {"corpus_stickers": m.corpus,
                     "shard_search_us": {str(x["slice_stickers"]): x["cpu_us_per_query"]
                                         for x in m.shard_lines},
                     "shard_wire_us": {str(n): round(o, 1) for n, o in m.o_pts},
                     "broker_us": {str(n): round(b, 1) for n, b in m.b_pts},
                     "client_us": round(m.K, 1)},
           "predictions": []}
    for n in (int(x) for x in a.shards.split(",")):
        p = m.qps(n, corpus, a.replicas, a.hosts, a.cores, workers, a.utilization)
        if a.target_qps:
            hosts = math.ceil(a.target_qps * p["cpu_us_per_query"]
                              / (a.cores * a.utilization * 1e6))
            p["target_qps"] = a.target_qps
            p["hosts_for_target"] = hosts
            p["replicas_for_target"] = max(a.replicas, math.ceil(
                a.target_qps * (p["shard_search_us"] + p["shard_wire_us"])
                / (min(workers, a.cores) * a.utilization * 1e6)))
        out["predictions"].append(p)
    out["checks"] = [check(m, c) for c in a.check]
    if a.json:
        print(json.dumps(out))
        return
    md = out["model"]
    print(f"model (CPU us per query): S(slice) {md['shard_search_us']}; O(N) "
          f"{md['shard_wire_us']}; B(N) {md['broker_us']}; client {md['client_us']}")
    print(f"{'shards':>6} {'slice':>8} {'S us':>8} {'O us':>7} {'B us':>8} {'cpu us/q':>9} "
          f"{'QPS/core':>9} {'QPS':>9}  bound")
    for p in out["predictions"]:
        extra = (f"  hosts for {p['target_qps']:.0f} QPS: {p['hosts_for_target']}, replicas >= "
                 f"{p['replicas_for_target']}") if a.target_qps else ""
        print(f"{p['shards']:>6} {p['slice_stickers']:>8} {p['shard_search_us']:>8} "
              f"{p['shard_wire_us']:>7} {p['broker_us']:>8} {p['cpu_us_per_query']:>9} {p['qps_per_core']:>9} "
              f"{p['qps']:>9}  {p['bound']}{extra}")
    for c in out["checks"]:
        print(f"check {c['run']}: {c['cores_allowed']} core(s) allowed, {c['cores_used']} used; "
              f"measured {c['measured_qps']} QPS; predicted {c['predicted_qps_allowed']} "
              f"({c['error_pct_allowed']:+}%) on the cores allowed, "
              f"{c['predicted_qps_used']} ({c['error_pct_used']:+}%) on the cores used; "
              f"CPU/query measured {c['measured_cpu_us_per_query']} us, predicted "
              f"{c['predicted_cpu_us_per_query']} ({c['error_pct_cpu']:+}%)")


if __name__ == "__main__":
    main()
