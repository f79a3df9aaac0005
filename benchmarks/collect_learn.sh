#!/bin/bash
# A learning run's small results (summary json, sample grids, training metrics) from its folder into a suite's OUT:
#     bash benchmarks/collect_learn.sh LEARN_FOLDER OUT NAME
# Called when the suite's learn job ends, and by detached_suite.sh on each return while one runs, so a device lease
# that ends mid-run still hands back every figure the run has saved (learn_procedural.py saves each as it lands).
set -u
src=$1 out=$2 name=$3
[ -d "$src" ] || exit 0
cp "$src/learn_procedural.json" "$out/$name.json" 2>/dev/null
cp "$src/reports/samples/samples.png" "$out/${name}_samples.png" 2>/dev/null
cp "$src/reports/train/metrics.jsonl" "$out/${name}_metrics.jsonl" 2>/dev/null
# the model's own grids (a benchmark's folder holds its baseline's; the model's is an entry)
for grid in "$src"/reports/evals/*/entries/model*/samples.png; do
  [ -f "$grid" ] && cp "$grid" "$out/${name}_$(basename "$(dirname "$(dirname "$(dirname "$grid")")")")_model.png"
done
# world GenEval's grids of the text2image stage's checkpoint and of the oracle round-tripped through the VAE
for grid in "$src"/reports_t2i/evals/world_geneval/entries/model*/samples.png; do
  [ -f "$grid" ] && cp "$grid" "$out/${name}_world_geneval_after_t2i.png"
done
for grid in "$src"/reports/evals/world_geneval/entries/folder*oracle-through-vae*/samples.png; do
  [ -f "$grid" ] && cp "$grid" "$out/${name}_world_geneval_oracle_through_vae.png"
done
exit 0
