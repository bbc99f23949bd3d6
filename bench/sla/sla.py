#!/usr/bin/python3
"""sla.py: the SLA benchmark of mrank: tiered latency promises under load and faults, measured
from outside with an independent grpcio client against a cluster started by `mrank up`.

  /usr/bin/python3 bench/sla/sla.py --mrank build/mrank [--dur 8] [--docs 32] [--out DIR]
        [--only load,mixed,stop,kill,huge]

The cluster is deploy/local.json made two replicas per pool (free loopback ports), one compute
thread per worker. Every figure is a ratio to, or is read beside, a capacity measured first in
the same run:
  capacity   closed loop on tier interactive (32 documents per request) at 1, 2 and 4 in flight,
             for --dur seconds each: requests answered in full (not degraded) per second (the
             largest of the three);
  load       open-loop Poisson on tier interactive at 0.5x, 1x, 2x and 5x capacity: goodput
             (requests answered in full within 1.5x the tier budget, per second, over
             capacity), p50/p99 of answered requests, p99 of refusals, degraded share (of which
             lexical: answered from the profile's lexical stage alone, every neural stage
             skipped), codes;
  mixed      5x capacity split evenly between tiers interactive (priority 2) and standard
             (priority 1): answered share and p99 per tier (lower tiers should shed first);
  stop       0.5x capacity on interactive; one of the two cheap replicas SIGSTOPped for 6 s
             (SIGCONT after): share answered over the whole window;
  kill       0.5x capacity on interactive; one full replica SIGKILLed (mrank up restarts it):
             share answered during and after;
  huge       four requests of one 3.9 MB document each (tier batch, no budget; each under
             the 4 MiB request limit), 1 s apart, beside small interactive requests at 0.5x
             capacity: share of the small ones answered (and how the big ones ended).
The client sets a 10 s gRPC deadline on every call: the tiers' budgets are the server's to
keep. Every load loop is bounded by --dur and by a request count; everything started is
stopped at exit. Prints one JSON line per point and a markdown table at the end; raw results
go to OUT/results.jsonl. The targets of issue P5 are printed beside the figures.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "clients"))
import grpc  # noqa: E402
import rerank_client as rc  # noqa: E402

CLIENT_TIMEOUT_S = 10.0


def free_ports(n):
    ss = [socket.socket() for _ in range(n)]
    for s in ss:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in ss]
    for s in ss:
        s.close()
    return ports


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * q))], 1)


class Cluster:
    """mrank up over a two-replica-per-pool copy of deploy/local.json."""

    def __init__(self, mrank, work):
        self.work = work
        pc, pm, *pw = free_ports(6)
        cfg = json.load(open(os.path.join(REPO, "deploy", "local.json")))
        cfg["coordinator"] = {"listen": f"127.0.0.1:{pc}", "metrics_port": pm}
        for pool, ports in zip(cfg["pools"], (pw[0:2], pw[2:4])):
            pool["addresses"] = [f"127.0.0.1:{p}" for p in ports]
            pool.pop("metrics_port_base", None)
        self.cfg = cfg
        self.addr = cfg["coordinator"]["listen"]
        path = os.path.join(work, "sla.json")
        json.dump(cfg, open(path, "w"))
        self.log = open(os.path.join(work, "up.log"), "w")
        self.proc = subprocess.Popen([mrank, "up", "--config", path, "--threads", "1",
                                      "--timeout-s", "120"], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        for line in self.proc.stdout:
            if line.startswith("coordinator: "):
                break
        else:
            raise SystemExit("mrank up exited before it was ready; see " + self.log.name)

    def worker_pid(self, pool, i):
        port = self.cfg["pools"][[p["name"] for p in self.cfg["pools"]].index(pool)][
            "addresses"][i].split(":")[1]
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", f"--listen 127.0.0.1:{port}"],
                             capture_output=True, text=True).stdout.split()
        if not out:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", f":{port}"],
                                 capture_output=True, text=True).stdout.split()
        return int(out[0])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    def __init__(self, addr):
        self.pb = rc.load_pb2()
        self.ch = grpc.insecure_channel(addr)
        ser = lambda m: m.SerializeToString()  # noqa: E731
        self.rerank = self.ch.unary_unary("/mrank.v1.Ranker/Rerank", request_serializer=ser,
                                          response_deserializer=self.pb.RerankResponse.FromString)
        if not rc.wait_serving(self.ch, ser, 120):
            raise SystemExit("the coordinator never went SERVING")

    def request(self, docs, tier, query="what is the capital of france?"):
        req = self.pb.RerankRequest(query=query, tier=tier)
        for d in docs:
            req.documents.add(text=d)
        return req


def make_docs(n, seed):
    rnd = random.Random(seed)
    words = ("paris france capital city river museum tower germany berlin population china "
             "the of and in is a to").split()
    return [" ".join(rnd.choice(words) for _ in range(40)) + f" ({i})." for i in range(n)]


def lexical_only(resp):
    """1 when the answer came from the profile's leading lexical stage alone: every stage after
    the first skipped (deploy/local.json's profiles start with their one lexical stage)."""
    return len(resp.stages) > 1 and all(st.skipped for st in resp.stages[1:])


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.rows = []   # (tag, sent_s, latency_ms, code, degraded, lexical only)

    def cb(self, tag, t0):
        def done(fut):
            lat = (time.monotonic() - t0) * 1e3
            try:
                r = fut.result()
                row = (tag, t0, lat, "OK", bool(r.degraded), lexical_only(r))
            except grpc.RpcError as e:
                row = (tag, t0, lat, e.code().name, False, False)
            with self.lock:
                self.rows.append(row)
        return done


def closed_loop(cl, req, conc, dur):
    """Requests answered in full (not degraded) per second with conc calls always in flight,
    for dur seconds."""
    n_ok = [0]
    lock = threading.Lock()
    end = time.monotonic() + dur

    def loop():
        while time.monotonic() < end:
            try:
                r = cl.rerank(req, timeout=CLIENT_TIMEOUT_S)
                with lock:
                    n_ok[0] += not r.degraded
            except grpc.RpcError:
                time.sleep(0.01)

    ts = [threading.Thread(target=loop) for _ in range(conc)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n_ok[0] / (time.monotonic() - t0)


def open_loop(cl, reqs, rate, dur, seed, during=None):
    """Poisson arrivals at rate/s for dur seconds; reqs: [(tag, weight, request)]. during(t) is
    called once per arrival with the elapsed seconds (fault injection). Returns the rows."""
    rec = Recorder()
    rnd = random.Random(seed)
    futs = []
    t_start = time.monotonic()
    t_next = t_start
    cap = int(rate * dur * 2) + 10   # bound on the count, whatever the clock does
    weights = [w for _, w, _ in reqs]
    while len(futs) < cap:
        t_next += rnd.expovariate(rate)
        if t_next - t_start > dur:
            break
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if during:
            during(time.monotonic() - t_start)
        tag, _, req = rnd.choices(reqs, weights)[0]
        t0 = time.monotonic()
        f = cl.rerank.future(req, timeout=CLIENT_TIMEOUT_S)
        f.add_done_callback(rec.cb(tag, t0))
        futs.append(f)
    for f in futs:
        try:
            f.result()
        except grpc.RpcError:
            pass
    with rec.lock:
        return list(rec.rows), time.monotonic() - t_start


def summarize(rows, wall, budget_ms, capacity):
    ok = [r for r in rows if r[3] == "OK"]
    refused = [r for r in rows if r[3] != "OK"]
    full = [r for r in ok if not r[4]]
    in_budget = [r for r in full if r[2] <= 1.5 * budget_ms] if budget_ms else full
    codes = {}
    for r in refused:
        codes[r[3]] = codes.get(r[3], 0) + 1
    return {"sent": len(rows), "answered": len(ok),
            "answered_share": round(len(ok) / len(rows), 3) if rows else None,
            "goodput_x_capacity": round(len(in_budget) / wall / capacity, 3) if capacity else None,
            "p50_ms": pct([r[2] for r in ok], 0.5), "p99_ms": pct([r[2] for r in ok], 0.99),
            "refusal_p99_ms": pct([r[2] for r in refused], 0.99),
            "degraded_share": round(sum(r[4] for r in ok) / len(ok), 3) if ok else None,
            "lexical_share": round(sum(r[5] for r in ok) / len(ok), 3) if ok else None,
            "codes": codes}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mrank", required=True)
    ap.add_argument("--dur", type=float, default=8.0)
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="load,mixed,stop,kill,huge")
    a = ap.parse_args()
    only = set(a.only.split(","))
    out = a.out or tempfile.mkdtemp(prefix="mrank-sla.")
    os.makedirs(out, exist_ok=True)
    results = open(os.path.join(out, "results.jsonl"), "w")
    cluster = Cluster(os.path.abspath(a.mrank), out)
    table = []

    def emit(rec):
        print(json.dumps(rec), flush=True)
        results.write(json.dumps(rec) + "\n")
        results.flush()
        table.append(rec)

    try:
        cl = Client(cluster.addr)
        budget = {t["name"]: t["budget_ms"] for t in cluster.cfg["tiers"]}
        small = cl.request(make_docs(a.docs, 1), "interactive")
        small_std = cl.request(make_docs(a.docs, 2), "standard")
        for _ in range(10):   # warm-up (the cost models settle); refusals are fine here
            try:
                cl.rerank(small, timeout=CLIENT_TIMEOUT_S)
            except grpc.RpcError:
                time.sleep(0.1)
        capacity = max(closed_loop(cl, small, c, a.dur) for c in (1, 2, 4))
        emit({"point": "capacity", "tier": "interactive", "answered_per_s": round(capacity, 2),
              "docs": a.docs})
        time.sleep(1)

        if "load" in only:
            for x in (0.5, 1, 2, 5):
                rows, wall = open_loop(cl, [("interactive", 1, small)], x * capacity, a.dur, 7)
                emit({"point": f"load {x}x", "tier": "interactive",
                      **summarize(rows, wall, budget["interactive"], capacity)})
                time.sleep(1)
        if "mixed" in only:
            rows, wall = open_loop(cl, [("interactive", 1, small), ("standard", 1, small_std)],
                                   5 * capacity, a.dur, 8)
            for tier in ("interactive", "standard"):
                emit({"point": "mixed 5x", "tier": tier,
                      **summarize([r for r in rows if r[0] == tier], wall, budget[tier],
                                  capacity / 2)})
            time.sleep(1)
        if "stop" in only:
            pid = cluster.worker_pid("cheap", 0)
            state = {"stopped": False, "resumed": False}

            def fault(t):
                if not state["stopped"] and t >= 1.0:
                    os.kill(pid, signal.SIGSTOP)
                    state["stopped"] = True
                elif state["stopped"] and not state["resumed"] and t >= 7.0:
                    os.kill(pid, signal.SIGCONT)
                    state["resumed"] = True
            try:
                rows, wall = open_loop(cl, [("interactive", 1, small)], 0.5 * capacity,
                                       max(a.dur, 9.0), 9, fault)
            finally:
                os.kill(pid, signal.SIGCONT)
            emit({"point": "SIGSTOP cheap[0] 6 s at 0.5x", "tier": "interactive",
                  **summarize(rows, wall, budget["interactive"], capacity)})
            time.sleep(1)
        if "kill" in only:
            pid = cluster.worker_pid("full", 0)
            state = {"killed": False}

            def fault(t):
                if not state["killed"] and t >= 1.0:
                    os.kill(pid, signal.SIGKILL)
                    state["killed"] = True
            rows, wall = open_loop(cl, [("interactive", 1, small)], 0.5 * capacity,
                                   max(a.dur, 8.0), 10, fault)
            emit({"point": "SIGKILL full[0] at 0.5x", "tier": "interactive",
                  **summarize(rows, wall, budget["interactive"], capacity)})
            time.sleep(3)   # mrank up restarts it
        if "huge" in only:
            # one 3.9 MB document per request (under the 4 MiB request limit, so it is
            # accepted and must cost only its token budget), four such requests 1 s apart
            huge_doc = ("word " * (3_900_000 // 5))[:3_900_000]
            huge = cl.request([huge_doc], "batch")
            big = {"n": 0, "futs": []}

            def fault(t):
                if big["n"] < 4 and t >= big["n"] * 1.0:
                    big["n"] += 1
                    big["futs"].append(cl.rerank.future(huge, timeout=CLIENT_TIMEOUT_S))
            rows, wall = open_loop(cl, [("interactive", 1, small)], 0.5 * capacity,
                                   max(a.dur, 8.0), 11, fault)
            huge_codes = {}
            for f in big["futs"]:
                try:
                    f.result()
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                huge_codes[code] = huge_codes.get(code, 0) + 1
            emit({"point": "4x 3.9 MB documents beside small at 0.5x", "tier": "interactive",
                  "huge_codes": huge_codes,
                  **summarize(rows, wall, budget["interactive"], capacity)})
    finally:
        cluster.stop()
        results.close()

    print("\n| point | tier | answered share | goodput / capacity | p50 ms | p99 ms | "
          "refusal p99 ms | degraded share (lexical) | codes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        if r["point"] == "capacity":
            print(f"| capacity | {r['tier']} | {r['answered_per_s']} answered/s "
                  f"({r['docs']} docs) | | | | | | |")
            continue
        print(f"| {r['point']} | {r['tier']} | {r['answered_share']} | "
              f"{r['goodput_x_capacity']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['refusal_p99_ms']} | {r['degraded_share']} ({r['lexical_share']}) | "
              f"{r['codes']} |")
    print("\nP5 targets: load 5x goodput >= 0.7, answered p99 <= 225 ms, refusal p99 <= 50 ms; "
          "SIGSTOP >= 0.97 answered; SIGKILL >= 0.97; huge >= 0.90 of the small answered.")
    print(f"raw: {out}/results.jsonl")


if __name__ == "__main__":
    main()
