#!/usr/bin/python3
"""Checks deploy/k8s against the Kubernetes schemas and against the binaries.

  /usr/bin/python3 tests/k8s_manifest_test.py ROOT BIN_DIR

1. The generated monitoring assets are current (scripts/k8s_assets.sh --check).
2. `kubectl kustomize` renders every overlay; every object (and the
   model-loader pod) passes kubernetes-models' schema validation (offline,
   tests/k8s; `npm ci` installs it on first use).
3. The rendered ConfigMap's cluster YAML passes every binary's
   --check-config (each worker index of the StatefulSets' replicas), and the
   ports each binary says it listens on are those of the manifests: container
   ports, probes, Services, NetworkPolicies; replicas equal the topology,
   advertise_host and coordinator.address name the headless Services and the
   coordinator's Service, the router's grace period exceeds its drain timeout.
4. The processes really listen there: a one-host variant of the cpu
   overlay's cluster YAML (one worker per role, loopback hosts, the shipped
   model, the same ports) runs under switchyard-local, and every TCP port each
   process listens on (read from /proc) is one its manifest names, and each
   named gRPC and metrics port is listened on.
Debian's python3-yaml parses the YAML (hence /usr/bin/python3).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

ROOT, BIN = sys.argv[1], sys.argv[2]
for tool, why in (("kubectl", "kubectl kustomize renders the overlays"),
                  ("node", "kubernetes-models validates the objects"),
                  ("npm", "npm ci installs kubernetes-models into tests/k8s")):
    if shutil.which(tool) is None:
        sys.exit(f"k8s_manifest_test: {tool} is not on PATH ({why})")
K8S = os.path.join(ROOT, "deploy/k8s")
failures = []


def log(msg):
    print(f"[k8s_manifest_test] {msg}", flush=True)


def fail(msg):
    failures.append(msg)
    print(f"[k8s_manifest_test] FAIL: {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- 1. generated assets ---------------------------------------------------
r = run(["bash", os.path.join(ROOT, "scripts/k8s_assets.sh"), "--check"])
if r.returncode != 0:
    fail(r.stderr.strip())

# --- 2. render and validate ------------------------------------------------
overlays = sorted(d for d in os.listdir(os.path.join(K8S, "overlays"))
                  if os.path.isfile(os.path.join(K8S, "overlays", d, "kustomization.yaml")))
if overlays != ["cpu", "gpu"]:
    fail(f"overlays are {overlays}, expected cpu and gpu")
rendered = {}
for o in overlays:
    r = run(["kubectl", "kustomize", os.path.join(K8S, "overlays", o)])
    if r.returncode != 0:
        sys.exit(f"kubectl kustomize overlays/{o} failed: {r.stderr}")
    rendered[o] = [d for d in yaml.safe_load_all(r.stdout) if d]
    log(f"overlays/{o}: {len(rendered[o])} objects")
extra = [yaml.safe_load(open(os.path.join(K8S, "overlays/cpu/model-loader.yaml")))]

validator = os.path.join(ROOT, "tests/k8s")
if not os.path.isdir(os.path.join(validator, "node_modules")):
    r = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=validator)
    if r.returncode != 0:
        sys.exit(f"npm ci in tests/k8s failed:\n{r.stdout}\n{r.stderr}")
everything = [obj for o in overlays for obj in rendered[o]] + extra
r = run(["node", os.path.join(validator, "validate.mjs")], input=json.dumps(everything))
log(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip())
if r.returncode != 0:
    fail("schema validation:\n" + r.stdout + r.stderr)

# The validator itself must reject a broken object (else it proves nothing).
broken = json.loads(json.dumps([o for o in rendered["cpu"] if o["kind"] == "Deployment"][0]))
broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
r = run(["node", os.path.join(validator, "validate.mjs")], input=json.dumps([broken]))
if r.returncode == 0 or "containerPort" not in r.stdout:
    fail(f"the validator accepted a string containerPort: {r.stdout}")


# --- 3. manifests against the binaries ---------------------------------------
def listeners(out):
    """Parses --check-config's 'listens on:' line into a dict."""
    m = re.search(r"listens on: (.*)", out)
    if not m:
        return None
    return dict(kv.split("=", 1) for kv in m.group(1).split())


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


ROLES = {  # role -> (workload kind, name, binary, Service name)
    "coordinator": ("StatefulSet", "switchyard-coordinator", "switchyard-coordinator",
                    "switchyard-coordinator"),
    "router": ("Deployment", "switchyard-router", "switchyard-router", "switchyard-router"),
    "attention-worker": ("StatefulSet", "switchyard-attention", "switchyard-attention-worker",
                         "switchyard-attention"),
    "expert-worker": ("StatefulSet", "switchyard-expert", "switchyard-expert-worker",
                      "switchyard-expert"),
}


def check_overlay(o, objs, work):
    cms = [c for c in objs if c["kind"] == "ConfigMap" and "cluster.yaml" in c.get("data", {})]
    if len(cms) != 1:
        fail(f"{o}: expected one ConfigMap with cluster.yaml, found {len(cms)}")
        return None
    text = cms[0]["data"]["cluster.yaml"]
    cfg_path = os.path.join(work, f"{o}.yaml")
    with open(cfg_path, "w") as f:
        f.write(text)
    cfg = yaml.safe_load(text)
    workloads = {**by_kind(objs, "StatefulSet"), **by_kind(objs, "Deployment")}
    services = by_kind(objs, "Service")
    expected = {}  # role -> {"grpc": port, "metrics": port, "ucx": (first, last) or None}
    for role, (kind, name, binary, svc_name) in ROLES.items():
        w = workloads.get(name)
        if w is None or w["kind"] != kind:
            fail(f"{o}: no {kind} {name}")
            continue
        pod = w["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if not c["command"][0].endswith("/" + binary):
            fail(f"{o}: {name} runs {c['command']}, not {binary}")
        if "--config=/etc/switchyard/cluster.yaml" not in c["args"]:
            fail(f"{o}: {name} does not read /etc/switchyard/cluster.yaml")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if mounts.get("config") != "/etc/switchyard" or \
                vols.get("config", {}).get("configMap", {}).get("name") != cms[0]["metadata"]["name"]:
            fail(f"{o}: {name} does not mount the cluster ConfigMap at /etc/switchyard")
        indices = [0]
        if role.endswith("worker"):
            want = cfg["topology"]["attention_workers" if role.startswith("attention")
                                   else "expert_workers"]
            if w["spec"]["replicas"] != want:
                fail(f"{o}: {name} has {w['spec']['replicas']} replicas, topology says {want}")
            indices = list(range(want))
            if "--index=$(POD_INDEX)" not in c["args"]:
                fail(f"{o}: {name} does not take --index from the pod ordinal")
        seen = None
        for i in indices:
            cmd = [os.path.join(BIN, binary), "--config", cfg_path, "--check-config"]
            if role.endswith("worker"):
                cmd += ["--index", str(i)]
            r = run(cmd)
            if r.returncode != 0 or "config OK" not in r.stdout:
                fail(f"{o}: {binary} --check-config (index {i}): rc {r.returncode}: "
                     f"{r.stdout}{r.stderr}")
                continue
            got = listeners(r.stdout)
            if seen is not None and got != seen:
                fail(f"{o}: {binary} index {i} listens on {got}, index 0 on {seen}: a "
                     "StatefulSet's pods share one template")
            seen = got
            if role.endswith("worker"):
                reg = re.search(r"registered as ([^)]*)\)", r.stdout).group(1)
                want_host = f"{name}-{i}.{w['spec']['serviceName']}"
                if reg != f"{want_host}:{port_of(got['grpc'])}":
                    fail(f"{o}: {name}-{i} registers as {reg}, not its pod's DNS name "
                         f"{want_host} under the headless Service")
        if seen is None:
            continue
        ucx = None
        if seen.get("ucx") not in (None, "any"):
            first, last = (int(x) for x in seen["ucx"].split("-"))
            ucx = (first, last)
        elif role.endswith("worker"):
            fail(f"{o}: {name}: the UCX data plane has no configured port range")
        exp = {"grpc": port_of(seen["grpc"]), "metrics": port_of(seen["metrics"]), "ucx": ucx}
        expected[role] = exp
        named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for key in ("grpc", "metrics"):
            if named.get(key) != exp[key]:
                fail(f"{o}: {name}: containerPort '{key}' is {named.get(key)}, the binary "
                     f"listens on {exp[key]}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe)
            if p is None:
                if probe != "startupProbe" or role.endswith("worker"):
                    fail(f"{o}: {name} has no {probe}")
                continue
            port = (p.get("grpc") or p.get("tcpSocket") or {}).get("port")
            port = named.get(port, port)
            if port != exp["grpc"]:
                fail(f"{o}: {name} {probe} probes port {port}, not gRPC {exp['grpc']}")
        if "readinessProbe" in c and "grpc" not in c["readinessProbe"]:
            fail(f"{o}: {name}'s readiness is not the gRPC health service")
        svc = services.get(svc_name)
        if svc is None:
            fail(f"{o}: no Service {svc_name}")
            continue
        if role.endswith("worker") and (svc["spec"].get("clusterIP") != "None" or
                                        not svc["spec"].get("publishNotReadyAddresses")):
            fail(f"{o}: {svc_name} must be headless and publish not-ready pods")
        for sp in svc["spec"]["ports"]:
            target = named.get(sp["targetPort"], sp["targetPort"])
            if target not in (exp["grpc"], exp["metrics"]) or sp["port"] != target:
                fail(f"{o}: Service {svc_name} port {sp['name']} ({sp['port']} -> "
                     f"{sp['targetPort']}) is not a port the process listens on")
        if role == "router":
            grace = pod.get("terminationGracePeriodSeconds", 30)
            drain = cfg.get("router", {}).get("drain_timeout_ms", 2000)
            if grace * 1000 <= drain:
                fail(f"{o}: router grace period {grace} s <= drain timeout {drain} ms")
        if role == "coordinator":
            host, port = cfg["coordinator"]["address"].rsplit(":", 1)
            if host != svc_name or int(port) not in [p["port"] for p in svc["spec"]["ports"]]:
                fail(f"{o}: coordinator.address {cfg['coordinator']['address']} is not the "
                     f"Service {svc_name}")
    # NetworkPolicies: every port they open is one a process listens on.
    for np in by_kind(objs, "NetworkPolicy").values():
        sel = np["spec"]["podSelector"].get("matchLabels", {})
        role = sel.get("app.kubernetes.io/component")
        allowed = set()
        ranges = set()
        for r_, e in expected.items():
            if role in (None, r_):  # roles are the pods' component labels
                allowed |= {e["grpc"], e["metrics"]}
                if e["ucx"]:
                    ranges.add(e["ucx"])
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if "endPort" in p:
                    if (p["port"], p["endPort"]) not in ranges:
                        fail(f"{o}: NetworkPolicy {np['metadata']['name']} opens "
                             f"{p['port']}-{p['endPort']}, not a UCX range of its pods")
                elif p["port"] not in allowed:
                    fail(f"{o}: NetworkPolicy {np['metadata']['name']} opens port "
                         f"{p['port']}, which its pods do not listen on")
    # The data plane must be open between workers.
    nps = by_kind(objs, "NetworkPolicy")
    for r_ in ("attention-worker", "expert-worker"):
        e = expected.get(r_)
        if e and e["ucx"] and not any(
                (p.get("port"), p.get("endPort")) == e["ucx"]
                for np in nps.values() for rule in np["spec"].get("ingress", [])
                for p in rule.get("ports", [])):
            fail(f"{o}: no NetworkPolicy opens {r_}'s UCX range {e['ucx']}")
    # Each metrics port is scraped by a PodMonitor with the job the rules use.
    for r_ in ROLES:
        pm = by_kind(objs, "PodMonitor").get(f"switchyard-{r_}")
        if pm is None:
            fail(f"{o}: no PodMonitor switchyard-{r_}")
            continue
        ep = pm["spec"]["podMetricsEndpoints"][0]
        jobs = [rl.get("replacement") for rl in ep.get("relabelings", [])
                if rl.get("targetLabel") == "job"]
        if ep.get("port") != "metrics" or jobs != [f"switchyard-{r_}"]:
            fail(f"{o}: PodMonitor switchyard-{r_} does not scrape port 'metrics' as job "
                 f"switchyard-{r_}")
    return cfg, expected


# --- 4. the processes really listen there ------------------------------------
def listening_ports(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return None
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def check_running(cfg, expected, work):
    local = dict(cfg)
    local["model"] = {"path": os.path.join(ROOT, "tests/data/goldens/qwen3_moe")}
    local["topology"] = dict(cfg["topology"], attention_workers=1, expert_workers=1)
    local["placement"] = {"redundant_experts": 0}
    local["coordinator"] = dict(cfg["coordinator"], listen="127.0.0.1:" + str(expected["coordinator"]["grpc"]),
                                address="127.0.0.1:" + str(expected["coordinator"]["grpc"]))
    local["router"] = dict(cfg["router"], listen="127.0.0.1:" + str(expected["router"]["grpc"]))
    for role in ("attention_worker", "expert_worker"):
        local[role] = dict(cfg[role], listen_host="127.0.0.1", advertise_host="127.0.0.1")
    local["metrics"] = dict(cfg["metrics"], host="127.0.0.1")
    path = os.path.join(work, "one-host.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(local, f)
    env = dict(os.environ, UCX_NET_DEVICES="lo")
    out = open(os.path.join(work, "local.out"), "w")
    proc = subprocess.Popen([os.path.join(BIN, "switchyard-local"), "--config", path,
                             "--log-dir", os.path.join(work, "logs")],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while "cluster ready" not in open(os.path.join(work, "local.out")).read():
            if proc.poll() is not None or time.time() > deadline:
                fail("the one-host cluster did not get ready (its ports may be taken):\n" +
                     open(os.path.join(work, "local.out")).read())
                return
            time.sleep(0.2)
        binaries = {ROLES[r][2]: r for r in ROLES}
        found = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
            except OSError:
                continue
            if path not in cmdline:
                continue
            role = binaries.get(os.path.basename(cmdline[0]))
            if role is None:
                continue
            found.add(role)
            ports = listening_ports(pid) or set()
            e = expected[role]
            for want in ("grpc", "metrics"):
                if e[want] not in ports:
                    fail(f"{role} does not listen on its manifest's {want} port {e[want]} "
                         f"(listens on {sorted(ports)})")
            for p in sorted(ports):
                in_range = e["ucx"] is not None and e["ucx"][0] <= p <= e["ucx"][1]
                if p not in (e["grpc"], e["metrics"]) and not in_range:
                    fail(f"{role} listens on port {p}, which its manifests do not name")
            if role.endswith("worker") and not any(
                    e["ucx"][0] <= p <= e["ucx"][1] for p in ports):
                fail(f"{role} has no UCX listener in {e['ucx']}")
            log(f"{role} (pid {pid}) listens on {sorted(ports)}")
        if found != set(ROLES):
            fail(f"found processes of {sorted(found)}, expected {sorted(ROLES)}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- 5. the images hold what the manifests run ------------------------------
for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
    text = open(os.path.join(ROOT, "deploy/docker", dockerfile)).read()
    if "USER 10001:10001" not in text:
        fail(f"{dockerfile} does not run as the non-root user 10001")
    for _, _, binary, _ in ROLES.values():
        target = binary.replace("-", "_")
        if target not in text or f"/build/bin/{binary}" not in text:
            fail(f"{dockerfile} does not build and install {binary}")
    if "COPY --from=build /out /opt/switchyard" not in text:
        fail(f"{dockerfile} does not install the binaries under /opt/switchyard/bin")
for o in overlays:
    for w in [x for x in rendered[o] if x["kind"] in ("StatefulSet", "Deployment")]:
        cmd = w["spec"]["template"]["spec"]["containers"][0]["command"][0]
        if not cmd.startswith("/opt/switchyard/bin/"):
            fail(f"{o}: {w['metadata']['name']} runs {cmd}, outside the image's /opt/switchyard/bin")
r = run(["bash", os.path.join(ROOT, "scripts/runtime_packages.sh")] +
        [os.path.join(BIN, ROLES[x][2]) for x in ROLES])
if r.returncode != 0 or "libucx0" not in r.stdout.split():
    fail(f"scripts/runtime_packages.sh: rc {r.returncode}: {r.stdout}{r.stderr}")
else:
    log(f"runtime packages: {' '.join(r.stdout.split())}")

with tempfile.TemporaryDirectory(prefix="sy-k8s-") as work:
    results = {o: check_overlay(o, rendered[o], work) for o in overlays}
    if results.get("cpu"):
        check_running(*results["cpu"], work)

if failures:
    sys.exit(f"{len(failures)} problem(s) with deploy/k8s")
log("every overlay renders, validates and matches the binaries' ports")
