#!/bin/bash
# The issue-28 round study: per classification task, rounds 0..ROUNDS of the vote (`full`), the
# calibrated labeller and the uncalibrated argmax, seed 0.
# Resumable at two levels: within a machine the loop's stage cache under runs/labeller-study is reused;
# across sessions a task whose result file already sits in OUT (committed to git) is skipped.
cd "$(dirname "$0")/.."
S=${SHARED:-../shared/data/natural-instructions}
R=${ROUNDS:-2}
OUT=${OUT:-docs/results/labeller-study}
mkdir -p "$OUT"
for t in task738_perspectrum_classification task190_snli_classification task199_mnli_classification \
         task937_defeasible_nli_social_classification task200_mnli_entailment_classification \
         task1386_anli_r2_entailment task1385_anli_r1_entailment; do
  result=$OUT/$t-r$R.json
  if [ -f "$result" ]; then echo "SKIP $t (have $result)"; continue; fi
  f=$S/$t.json; [ -f $f ] || f=selfguide_lite/data/$t.json
  start=$(date +%s)
  python3 scripts/effect_study.py --rounds $R --seeds 0 --variants full content_free_calibrated argmax \
    --config docs/results/labeller-margin.yaml --tasks $f --work runs/labeller-study \
    --json "$result.tmp" && mv "$result.tmp" "$result" || echo "FAILED $t"
  echo "TASK $t $(( $(date +%s) - start )) s"
done
echo DONE
