#!/usr/bin/env bash
# Run every ts_classification recipe with its seed, then a 5-seed study of one recipe ($STUDY, default
# inception_time_basicmotions; seeds 0-4, the same validation split), and print
# one JSON line per run (recipe, seed, test metrics, fit seconds). Run folders go to $OUT (default runs/tsc).
#   MTP_DATA_DIR=../shared/data bash scripts/env.sh bash benchmarks/tsc_recipes.sh [recipe.yaml ...]
#   ... benchmarks/tsc_recipes.sh --study-only          only the seed study (SKIP_STUDY=1: only the recipes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-runs/tsc}"
STUDY="${STUDY:-inception_time_basicmotions}"
THREADS="${THREADS:-2}"
recipes=("$@")
if [ "${1:-}" = "--study-only" ]; then
  recipes=()
elif [ ${#recipes[@]} -eq 0 ]; then
  recipes=(recipes/ts_classification/*.yaml)
fi
summarise() {  # metrics.json of a run folder -> one JSON line
  python - "$1" "$2" <<'PY'
import json, sys
run = json.load(open(f"{sys.argv[1]}/metrics.json"))
m = run["metrics"]
print(json.dumps({"recipe": run["recipe"], "seed": int(sys.argv[2]), "accuracy": round(m["accuracy"], 4),
                  "balanced_accuracy": round(m["balanced_accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
                  "errors": m["errors"], "samples": m["samples"], "fit_seconds": run["fit_seconds"]}))
PY
}
for recipe in "${recipes[@]+"${recipes[@]}"}"; do
  name="$(basename "$recipe" .yaml)"
  seed="$(python -c "import yaml,sys; print((yaml.safe_load(open(sys.argv[1])).get('train') or {}).get('seed', 2021))" "$recipe")"
  mtp run "$recipe" output.dir="$OUT" train.threads="$THREADS" --overwrite >/dev/null 2>"$OUT.$name.log" || { echo "{\"recipe\": \"$name\", \"failed\": true}"; continue; }
  summarise "$OUT/$name" "$seed"
done
if [ -z "${SKIP_STUDY:-}" ]; then
  for seed in 0 1 2 3 4; do
    name="${STUDY}_seed$seed"
    mtp run "recipes/ts_classification/$STUDY.yaml" output.dir="$OUT" output.name="$name" \
      train.seed="$seed" train.threads="$THREADS" --overwrite >/dev/null 2>"$OUT.$name.log" || { echo "{\"recipe\": \"$name\", \"failed\": true}"; continue; }
    summarise "$OUT/$name" "$seed"
  done
fi
