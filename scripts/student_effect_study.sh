#!/bin/bash
# The effect study for a second student (issue 29; default gemma3-270m), resumable across sessions:
#   1. self-label quality on validation (scripts/label_quality_study.py --model M): every labeller at round 0;
#   2. rounds 0-2, seed 0, on the 7 classification tasks with the vote and the calibrated labeller
#      (margin: the one step 1's rule picked for this student, OUT/labeller-margin.yaml), and on the
#      4 generation tasks with the vote.
# Per-task, per-labeller results land in OUT (commit them); one that is there is skipped, so a later session
# finishes the study. Within a machine the loop's stage cache under runs/ is reused too.
# Tables: python3 scripts/student_study_report.py "$OUT" (beside the built-in SmolLM2's results).
cd "$(dirname "$0")/.."
S=${SHARED:-../shared/data/natural-instructions}
M=${MODEL:-gemma3-270m}
R=${ROUNDS:-2}
OUT=${OUT:-docs/results/effect-study-$M}
mkdir -p "$OUT"
if [ ! -f "$OUT/label-quality.json" ]; then
  python3 scripts/label_quality_study.py --model "$M" --json "$OUT/label-quality.json.tmp" \
    && mv "$OUT/label-quality.json.tmp" "$OUT/label-quality.json" || echo "FAILED label quality"
fi
# The calibrated labeller's margin: what label_quality_study.py's rule picked for this student on
# validation (its decision's label_margin), written once; the vote ignores it.
CFG=$OUT/labeller-margin.yaml
if [ ! -f "$CFG" ] && [ -f "$OUT/label-quality.json" ]; then
  python3 -c "import json, sys; m = json.load(open(sys.argv[1]))['decision']['label_margin']; print(f'selfguide:\n  label_margin: {m}')" \
    "$OUT/label-quality.json" > "$CFG.tmp" && mv "$CFG.tmp" "$CFG"
fi
[ -f "$CFG" ] || { echo "error: no $CFG (the label-quality study did not finish)" >&2; exit 2; }
run() {  # task, variants...: one result file per task and labeller, the unit a session can finish
  local t=$1; shift
  for v in "$@"; do
    local result=$OUT/$t-$v-r$R.json
    if [ -f "$result" ]; then echo "SKIP $t $v (have $result)"; continue; fi
    local start=$(date +%s)
    python3 scripts/effect_study.py --model "$M" --rounds $R --seeds 0 --variants $v \
      --config "$CFG" --tasks "$S/$t.json" --work "runs/effect-study-$M" \
      --json "$result.tmp" && mv "$result.tmp" "$result" || echo "FAILED $t $v"
    echo "TASK $t $v $(( $(date +%s) - start )) s"
  done
}
# The default labeller (the vote) on all 11 tasks first (the two slow ANLI tasks last), then the calibrated
# one on the 7 classification tasks: a session that ends early leaves the default's table as complete as it
# can be rather than a few tasks with both labellers.
CLASSIFICATION="task738_perspectrum_classification task190_snli_classification task199_mnli_classification
  task937_defeasible_nli_social_classification task200_mnli_entailment_classification"
ANLI="task1386_anli_r2_entailment task1385_anli_r1_entailment"
GENERATION="task1195_disflqa_disfluent_to_fluent_conversion task121_zest_text_modification
  task036_qasc_topic_word_to_generate_related_fact task039_qasc_find_overlapping_words"
for t in $CLASSIFICATION $GENERATION $ANLI; do run $t full; done
for t in $CLASSIFICATION $ANLI; do run $t content_free_calibrated; done
echo DONE
