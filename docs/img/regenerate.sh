#!/usr/bin/env bash
# Regenerates the README's figures and its "first screen" from one full quick run (issue 29). Run it on a
# quiet machine from the repository root; it prints the wall time to quote in the README.
#   bash docs/img/regenerate.sh            (needs headless Chromium for the first-screen picture)
set -euo pipefail
out="${1:-results/quick}"
start=$(date +%s)
python run_bench.py run quick --out "$out" | tee "$out.summary.txt"   # the findings: the summary's last lines
echo "wall time: $(( $(date +%s) - start )) s (quote it in the README with the machine)"
cp "$out/plots/cd-mean_rank-shapes_cnn-shapes.png" docs/img/quick-cd-shapes.png
cp "$out/plots/ranks-shapes_cnn-shapes.png" docs/img/quick-ranks-shapes.png
cp "$out/plots/gallery-shapes_cnn-shapes.png" docs/img/quick-gallery-shapes.png
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --screenshot=docs/img/quick-report-first-screen.png --window-size=1400,1000 "file://$(realpath "$out/report.html")"
rm -rf "$profile"
ls -l "$out/report.html" docs/img/
