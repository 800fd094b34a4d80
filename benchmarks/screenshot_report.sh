#!/usr/bin/env bash
# A documented check of the report as a user sees it: run the tiny pipeline, build the Snakemake
# report, and take headless-Chromium screenshots of the report itself: its home page and each of
# its results opened inside it as its buttons open them (loss curves and diagnostics, samples,
# evaluation, resolved config, provenance chain), through tests/report_browser.py.
#   apt-get install chromium      # Debian's package; /usr/bin/chromium
#   bash benchmarks/screenshot_report.sh [OUT_DIR]   (default: screenshots/)
# Then look at the PNGs. Runs in a temporary copy of the workflow; offline (../shared/assets).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-screenshots}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root"/{Snakefile,workflow,profiles,config} "$work"/
rm -f "$work/config/download.lock.json"
mkdir -p "$out"
cd "$work"
snakemake --cores 2 --config runs=tiny mirror="$root/../shared/assets" > snakemake.log 2>&1
snakemake --cores 2 --config runs=tiny --report report.html >> snakemake.log 2>&1
python "$root/tests/report_browser.py" shots report.html "$out"
