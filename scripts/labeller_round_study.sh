#!/bin/bash
# The issue-28 round study, one task at a time with all three labellers (resumable: the loop's stage cache).
cd "$(dirname "$0")/.."
S=${SHARED:-../shared/data/natural-instructions}
for t in task738_perspectrum_classification task190_snli_classification task199_mnli_classification \
         task937_defeasible_nli_social_classification task200_mnli_entailment_classification \
         task1386_anli_r2_entailment task1385_anli_r1_entailment; do
  f=$S/$t.json; [ -f $f ] || f=selfguide_lite/data/$t.json
  python3 scripts/effect_study.py --rounds ${ROUNDS:-1} --seeds 0 --variants full content_free_calibrated argmax \
    --config docs/results/labeller-margin.yaml --tasks $f --work runs/labeller-study \
    --json runs/labeller-study/$t-r${ROUNDS:-1}.json || echo "FAILED $t"
done
echo DONE
