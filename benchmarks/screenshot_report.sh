#!/usr/bin/env bash
# A documented check of the report as a user sees it: run the tiny pipeline, build the Snakemake
# report, and take headless-Chromium screenshots of the report's home page and of the pages it
# embeds (loss curves and diagnostics, samples, evaluation, resolved config, provenance chain).
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
shot() {  # page, png name, height
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chrome" --hide-scrollbars --window-size=1400,"$3" \
    --virtual-time-budget=5000 --screenshot="$out/$2" "file://$1" > /dev/null 2>&1
  echo "$out/$2"
}
shot "$work/report.html" report-home.png 1000
shot "$work/results/tiny/report/loss.svg" loss.png 900
shot "$work/results/tiny/report/samples.html" samples.png 900
shot "$work/results/tiny/report/eval.html" eval.png 400
shot "$work/results/tiny/report/config.html" config.png 1200
shot "$work/results/tiny/report/provenance.html" provenance.png 1600
