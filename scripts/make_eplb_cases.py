#!/usr/bin/env python3
"""Writes eplb/testdata/*.json: loads and DeepSeek's EPLB placements for them.

The placements come from the NumPy reference of DeepSeek's algorithm in
../shared/tools/eplb_ref (checked against the torch original there); the C++
port (eplb/planner.cc) must reproduce them exactly (eplb/planner_test.cc).
Needs Debian's python3-numpy. Run from the repository root:
    /usr/bin/python3 scripts/make_eplb_cases.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "tools", "eplb_ref"))
import numpy as np  # noqa: E402
import eplb_ref  # noqa: E402

# name, experts, layers, gpus, nodes, groups, physical, trace, seed, tokens, topk
CASES = [
    ("small", 16, 4, 4, 2, 4, 24, "zipf:1.1", 3, 4096, 4),
    ("dsv3_288_zipf11", 256, 58, 32, 4, 8, 288, "zipf:1.1", 0, 65536, 8),
    ("dsv3_320_zipf15", 256, 8, 32, 4, 8, 320, "zipf:1.5", 1, 65536, 8),
    ("dsv3_288_zipf08", 256, 8, 32, 4, 8, 288, "zipf:0.8", 2, 65536, 8),
]


def write(name, load, gpus, nodes, groups, physical):
    out = {"experts": int(load.shape[1]), "layers": int(load.shape[0]), "gpus": gpus,
           "nodes": nodes, "groups": groups, "physical": physical,
           "load": load.astype(np.int64).tolist()}
    for policy in ("global", "hierarchical"):
        phy2log, _, _ = eplb_ref.rebalance_experts(load, physical, groups, nodes, gpus,
                                                   policy=policy)
        out[policy] = phy2log.tolist()
        out[policy + "_balancedness"] = eplb_ref.score(load, phy2log, gpus, nodes)["balancedness"]
    path = os.path.join(ROOT, "eplb", "testdata", name + ".json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"{path}: global {out['global_balancedness']:.4f} "
          f"hierarchical {out['hierarchical_balancedness']:.4f}")


def write_trace(name, seed, windows, drift):
    """A [windows, 16 layers, 256 experts] Zipf 1.1 trace with drift."""
    load = eplb_ref.generate_trace("zipf:1.1", 16, 256, seed=seed, tokens=65536, topk=8,
                                   windows=windows, drift=drift)
    path = os.path.join(ROOT, "eplb", "testdata", name + ".json")
    with open(path, "w") as f:
        json.dump({"experts": 256, "layers": 16, "gpus": 32, "nodes": 4, "groups": 8,
                   "physical": 288, "windows": windows, "load": load.astype(np.int64).tolist()},
                  f, separators=(",", ":"))
    print(f"{path}: {windows} windows, drift {drift}")


def main():
    for name, e, l, g, n, grp, p, trace, seed, tokens, topk in CASES:
        load = eplb_ref.generate_trace(trace, l, e, seed=seed, tokens=tokens, topk=topk)[0]
        write(name, load, g, n, grp, p)
    # Drifting traces (minimal movement, planning on past windows).
    write_trace("dsv3_288_drift", seed=5, windows=4, drift=0.3)
    write_trace("dsv3_288_slowdrift", seed=7, windows=5, drift=0.02)
    # Exact ties everywhere: equal loads, and pairs of equal loads.
    ties = np.full((3, 32), 100, dtype=np.int64)
    ties[1] = np.repeat(np.arange(16, 0, -1), 2) * 10
    ties[2, ::3] = 0
    write("ties", ties, 8, 2, 4, 40)


if __name__ == "__main__":
    main()
