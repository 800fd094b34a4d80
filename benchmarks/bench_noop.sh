#!/usr/bin/env bash
# Wall time of a no-op `snakemake` (everything up to date) on this workflow, beside a trivial
# 20-rule Snakefile on the same machine at the same time (issue 4 section 6: under 1.5 s).
#   bash benchmarks/bench_noop.sh [N]        best and median of N runs each (default 10)
# Builds the tiny run in a temporary copy of the workflow first (data from ../shared/assets, or
# MIRROR=DIR_OR_URL); if a stage fails there, it measures up to `prepare` and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
ROOT=$PWD
MIRROR=${MIRROR:-$(realpath "$ROOT/../shared/assets")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} WANDB_MODE=${WANDB_MODE:-disabled} WANDB_SILENT=true

mkdir "$WORK/wf" "$WORK/trivial"
for name in Snakefile workflow profiles config; do cp -r "$ROOT/$name" "$WORK/wf/"; done
rm -f "$WORK/wf/config/download.lock.json"
CONFIG=(--config runs=tiny "mirror=$MIRROR")
TARGET=all
if ! (cd "$WORK/wf" && snakemake --cores 2 "${CONFIG[@]}" >"$WORK/build.log" 2>&1); then
    echo "the tiny run failed (see below); measuring up to prepare" >&2
    tail -n 5 "$WORK/build.log" >&2
    TARGET=prepare
    (cd "$WORK/wf" && snakemake --cores 2 prepare "${CONFIG[@]}" >"$WORK/build.log" 2>&1) \
        || { tail -n 20 "$WORK/build.log" >&2; exit 1; }
fi
(cd "$WORK/wf" && snakemake --cores 2 "$TARGET" "${CONFIG[@]}" 2>&1) | grep -q "Nothing to be done" \
    || { echo "not up to date after building: no no-op to time" >&2; exit 1; }

python3 - "$WORK/trivial/Snakefile" <<'EOF'
import sys
rules = "".join(f"\nrule r{i}:\n    output: 'f{i}'\n    shell: 'touch {{output}}'\n" for i in range(20))
open(sys.argv[1], "w").write("rule all:\n    input: [f'f{i}' for i in range(20)]\n" + rules)
EOF
(cd "$WORK/trivial" && snakemake --cores 1 >/dev/null 2>&1)

# Interleaved, so both see the same machine load.
python3 - "$N" "$WORK" "$TARGET" "${CONFIG[@]}" <<'EOF'
import resource, statistics, subprocess, sys, time
n, work, target, config = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
cmds = {
    f"nanogptx no-op (snakemake --cores 2 {target} {' '.join(config)})":
        (["snakemake", "--cores", "2", target, *config], f"{work}/wf"),
    "trivial 20-rule Snakefile no-op (snakemake --cores 1)":
        (["snakemake", "--cores", "1"], f"{work}/trivial"),
}

def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


wall = {name: [] for name in cmds}
busy = {name: [] for name in cmds}
for _ in range(n):
    for name, (cmd, cwd) in cmds.items():
        t0, c0 = time.perf_counter(), cpu()
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
        wall[name].append(time.perf_counter() - t0)
        busy[name].append(cpu() - c0)
        assert "Nothing to be done" in out.stdout + out.stderr, out.stdout + out.stderr
for name in cmds:
    w, c = wall[name], busy[name]
    print(f"{name}:\n  wall best {min(w):.2f} s, median {statistics.median(w):.2f} s;"
          f" CPU (user+sys) best {min(c):.2f} s ({n} runs)")
EOF
