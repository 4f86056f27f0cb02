"""Read `jdistill bench attention --json` rows and print the issue's GPU goals as PASS/FAIL lines (bf16, head
dim 128, seq 8192): fused forward >= 1.2x cuDNN + separate gate, causal forward >= 450 TFLOP/s, fused
forward + backward >= 1.1x. Exit status 1 if any goal fails or is missing."""

import json
import sys


def main(path: str) -> int:
    with open(path) as lines:
        rows = [json.loads(line) for line in lines if line.strip()]

    def pick(**want):
        return [
            r
            for r in rows
            if r["impl"] == "pallas_gpu"
            and r["seq"] == 8192
            and r["head_dim"] == 128
            and all(r[key] == value for key, value in want.items())
        ]

    goals = [
        ("forward vs cudnn+gate >= 1.2x", pick(mode="fwd"), "vs_cudnn", 1.2),
        ("causal forward >= 450 TFLOP/s", pick(mode="fwd", causal=True), "tflops", 450.0),
        ("forward+backward vs cudnn+gate >= 1.1x", pick(mode="fwd+bwd"), "vs_cudnn", 1.1),
    ]
    failed = False
    for name, matches, key, threshold in goals:
        values = [r[key] for r in matches]
        ok = bool(values) and all(v is not None and v >= threshold for v in values)
        failed |= not ok
        shown = ", ".join(f"causal={r['causal']}: {r[key] if r[key] is None else round(r[key], 2)}" for r in matches)
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({shown or 'no rows'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
