#!/usr/bin/env python3
"""A real Prometheus against a real local cluster (CI, loopback only).

Starts switchyard-local (1 attention worker, 2 expert workers, per-expert
load metrics on) and Debian's Prometheus scraping every process's /metrics
with deploy/prometheus/switchyard-rules.yaml loaded, drives load with
switchyard-loadgen, then:
  - every query of every panel of deploy/grafana/switchyard-dashboard.json
    ($__rate_interval and $__range substituted) returns data through the HTTP
    API (a non-empty result, not only NaN);
  - every recording and alerting rule is loaded and evaluates without error,
    and each rule's expression is valid as an instant query;
  - no alert fires on the healthy cluster; then an expert worker is killed
    (SIGKILL) and SwitchyardWorkerDown shows as firing in ALERTS.
With SY_DASHBOARD_PNG=FILE it also renders the panels' data into FILE
(deploy/grafana/render_dashboard.py, needs python3-matplotlib).
Usage: prometheus_live_test.py BIN_DIR SOURCE_DIR
"""
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

BIN, ROOT = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
T0 = time.time()


def log(msg):
    print(f"[prometheus_live {time.time() - T0:6.1f}s] {msg}", flush=True)


def port_free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()


def port_range(n):
    # Below Linux's ephemeral range, like the e2e tests' ports.
    rng = random.Random(os.getpid())
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        if all(port_free(base + i) for i in range(n)):
            return base
    sys.exit("no free port range on 127.0.0.1")


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def api(prom, path, **params):
    q = urllib.parse.urlencode(params)
    return json.loads(get(f"http://127.0.0.1:{prom}/api/v1/{path}?{q}"))


def pids_running(argv_tail):
    """Pids whose command line ends with argv_tail (its program by basename)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")[:-1]
        except OSError:
            continue
        if len(argv) == len(argv_tail) and os.path.basename(argv[0]) == argv_tail[0] and \
                argv[1:] == argv_tail[1:]:
            found.append(pid)
    return found


def has_data(result):
    for r in result:
        vals = [r["value"][1]] if "value" in r else [v[1] for v in r.get("values", [])]
        if any(not math.isnan(float(v)) for v in vals):
            return True
    return False


def main():
    work = tempfile.mkdtemp(prefix="sy-prom-live-")
    procs = []
    ok = False
    try:
        base = port_range(11)
        coord, router, aw, ew = base, base + 1, base + 2, base + 3  # ew: 2 ports
        m = base + 5  # metrics: coordinator, router, aw, ew, ew
        prom = base + 10
        yaml = os.path.join(work, "cluster.yaml")
        with open(yaml, "w") as f:
            f.write(f"""model:
  path: {ROOT}/tests/data/goldens/qwen3_moe
topology:
  attention_workers: 1
  expert_workers: 2
transport:
  backend: ucx
coordinator:
  listen: 127.0.0.1:{coord}
  heartbeat_ms: 300
  worker_timeout_ms: 2000
router:
  listen: 127.0.0.1:{router}
attention_worker:
  base_port: {aw}
expert_worker:
  base_port: {ew}
metrics:
  coordinator_port: {m}
  router_port: {m + 1}
  attention_worker_base_port: {m + 2}
  expert_worker_base_port: {m + 3}
  per_expert_load: true
""")
        env = dict(os.environ, UCX_NET_DEVICES=os.environ.get("UCX_NET_DEVICES", "lo"))
        out = open(os.path.join(work, "local.out"), "w")
        local = subprocess.Popen([f"{BIN}/switchyard-local", "--config", yaml, "--log-dir",
                                  os.path.join(work, "logs")], stdout=out, stderr=subprocess.STDOUT,
                                 env=env)
        procs.append(local)
        deadline = time.time() + 180
        while "cluster ready" not in open(os.path.join(work, "local.out")).read():
            if local.poll() is not None or time.time() > deadline:
                sys.exit("switchyard-local did not get ready:\n" +
                         open(os.path.join(work, "local.out")).read())
            time.sleep(0.2)
        log(f"cluster ready (router 127.0.0.1:{router}, metrics {m}-{m + 4})")

        rules = os.path.join(ROOT, "deploy/prometheus/switchyard-rules.yaml")
        cfg = os.path.join(work, "prometheus.yml")
        jobs = {"switchyard-coordinator": [m], "switchyard-router": [m + 1],
                "switchyard-attention-worker": [m + 2],
                "switchyard-expert-worker": [m + 3, m + 4]}
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n")
            f.write(f"rule_files:\n  - {rules}\nscrape_configs:\n")
            for job, ports in jobs.items():
                targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
                f.write(f"  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n")
        prom_log = open(os.path.join(work, "prometheus.log"), "w")
        server = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                                   f"--storage.tsdb.path={work}/tsdb",
                                   f"--web.listen-address=127.0.0.1:{prom}", "--log.level=warn"],
                                  stdout=prom_log, stderr=subprocess.STDOUT)
        procs.append(server)
        deadline = time.time() + 60
        while True:
            try:
                get(f"http://127.0.0.1:{prom}/-/ready", timeout=2)
                break
            except Exception:
                if server.poll() is not None or time.time() > deadline:
                    sys.exit("prometheus did not get ready:\n" +
                             open(os.path.join(work, "prometheus.log")).read())
                time.sleep(0.3)
        log(f"prometheus ready on 127.0.0.1:{prom}")

        load = subprocess.Popen([f"{BIN}/switchyard-loadgen", "--addr", f"127.0.0.1:{router}",
                                 "--concurrency", "4", "--duration-s", "90", "--prompt-len", "8",
                                 "--prompt-len-max", "24", "--max-new-tokens", "8",
                                 "--max-new-tokens-max", "24"],
                                stdout=open(os.path.join(work, "loadgen.out"), "w"),
                                stderr=subprocess.STDOUT, env=env)
        procs.append(load)
        load_started = time.time()
        # Some refused requests too, so that the error panels have series: a
        # prompt token outside the vocabulary is INVALID_ARGUMENT.
        for _ in range(3):
            r = subprocess.run([f"{BIN}/switchyard-client", "generate", "--addr",
                                f"127.0.0.1:{router}", "--prompt-ids", "1,100000"],
                               capture_output=True, text=True)
            if r.returncode != 2:
                sys.exit(f"an out-of-vocabulary prompt was not refused (exit {r.returncode}): "
                         f"{r.stdout}{r.stderr}")
        # Every target up, and enough samples for 15 s rate windows.
        deadline = time.time() + 60
        while True:
            up = api(prom, "query", query='up{job=~"switchyard.*"}')["data"]["result"]
            if len(up) == 5 and all(r["value"][1] == "1" for r in up):
                break
            if time.time() > deadline:
                sys.exit(f"targets not all up: {up}")
            time.sleep(1)
        time.sleep(20)
        log("5 targets up; load running")

        failures = []
        dash = json.load(open(os.path.join(ROOT, "deploy/grafana/switchyard-dashboard.json")))
        queries = 0
        for p in dash["panels"]:
            for t in p.get("targets", []):
                expr = t["expr"].replace("$__rate_interval", "15s").replace("$__range", "5m")
                queries += 1
                r = api(prom, "query", query=expr)
                if r.get("status") != "success":
                    failures.append(f"panel '{p['title']}': {expr}: {r}")
                elif not has_data(r["data"]["result"]):
                    failures.append(f"panel '{p['title']}': no data for {expr}")
        log(f"{queries} panel queries evaluated")
        picture = os.environ.get("SY_DASHBOARD_PNG")
        if picture:  # a picture of the panels for the docs (python3-matplotlib)
            time.sleep(max(0.0, 75 - (time.time() - load_started)))
            r = subprocess.run(["/usr/bin/python3",
                                os.path.join(ROOT, "deploy/grafana/render_dashboard.py"),
                                f"127.0.0.1:{prom}", picture, "1.5"],
                               capture_output=True, text=True)
            log(r.stdout.strip() or r.stderr.strip())
            if r.returncode != 0:
                failures.append(f"render_dashboard.py failed: {r.stderr}")

        groups = api(prom, "rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        want = sum(1 for line in open(rules) if line.strip().startswith(("- alert:", "- record:")))
        if len(loaded) != want:
            failures.append(f"prometheus loaded {len(loaded)} rules, the file has {want}")
        for r in loaded:
            if r.get("health") != "ok":
                failures.append(f"rule {r['name']}: health {r.get('health')}: {r.get('lastError')}")
            q = api(prom, "query", query=r["query"])
            if q.get("status") != "success":
                failures.append(f"rule {r['name']}: {r['query']}: {q}")
        firing = api(prom, "query", query='ALERTS{alertstate="firing"}')["data"]["result"]
        if firing:
            failures.append("alerts fire on a healthy cluster: " +
                            ", ".join(a["metric"]["alertname"] for a in firing))
        log(f"{len(loaded)} rules loaded and evaluated")

        # Kill expert worker 1: SwitchyardWorkerDown must fire.
        pids = pids_running(["switchyard-expert-worker", "--config", yaml, "--index", "1"])
        if len(pids) != 1:
            failures.append(f"expected one expert worker 1 process, found {pids}")
        else:
            os.kill(int(pids[0]), signal.SIGKILL)
            killed = time.time()
            log(f"killed expert worker 1 (pid {pids[0]})")
            fired = False
            while time.time() - killed < 120:
                res = api(prom, "query",
                          query='ALERTS{alertname="SwitchyardWorkerDown",alertstate="firing"}')
                if res["data"]["result"]:
                    labels = res["data"]["result"][0]["metric"]
                    log(f"SwitchyardWorkerDown firing {time.time() - killed:.1f} s after the kill "
                        f"(role={labels.get('role')})")
                    fired = labels.get("role") == "expert"
                    break
                time.sleep(1)
            if not fired:
                failures.append("SwitchyardWorkerDown did not fire (role expert) within 120 s")
        if failures:
            print("FAILED:\n  " + "\n  ".join(failures), flush=True)
            return 1
        ok = True
        log("passed")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p is procs[0] else signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (cluster and prometheus logs)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
