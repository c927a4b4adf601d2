#!/usr/bin/env bash
# Issue 9's GPU figures in one device call (~9 min on one H100), all at once on the one GPU:
#   1. SmolLM2-135M-Instruct HumanEval, 164 problems, greedy, chat format, batch 64;
#   2. the mixed lock-step consortium: SmolLM2 + 3 embedded nodes, 5 rounds, seeds 0-2,
#      knexa / random / local-only (9 runs, one process each);
#   3. the SmolLM2-only lock-step consortium: 4 SmolLM2 nodes on skewed shards, 5 rounds, seed 0,
#      knexa / local-only, HumanEval before and after.
# Usage: GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf OUT=dir DEADLINE_S=520 bench/gpu_pretrained_consortia.sh
# PARTS picks among "humaneval mixed smollm2only" (default all); MIXED_SEEDS and MIXED_POLICIES narrow the
# mixed part. Whatever has finished by DEADLINE_S is collected (each run leaves its own JSON).
# Memory: the SmolLM2-only runs hold ~14 GiB each; next to 9 mixed runs two of those died of OOM on an H100.
# Preparing the carry folders (packages, the GGUF in two parts): bench/gpu_carry_prepare.sh.
set -u
OUT=${OUT:?} GGUF=${GGUF:?} DEADLINE_S=${DEADLINE_S:-520} PARTS=${PARTS:-humaneval mixed smollm2only}
MIXED_SEEDS=${MIXED_SEEDS:-0 1 2} MIXED_POLICIES=${MIXED_POLICIES:-knexa random local-only}
want() { [[ " $PARTS " == *" $1 "* ]]; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
W=$(mktemp -d)
start=$(date +%s)
python3 -c "from knexa_node.learn.gguf_import import import_gguf; print(import_gguf('$GGUF', '$W/smollm2'))" >"$OUT/import.log" 2>&1 \
  || { cat "$OUT/import.log"; exit 1; }
echo "imported in $(( $(date +%s) - start )) s"
S=$W/smollm2
want humaneval && python3 bench/pretrained_humaneval.py --model "$S" --device cuda --batch-size 64 --max-new-tokens 256 \
  --log "$W/he.jsonl" >"$W/humaneval.json" 2>"$W/humaneval.log" &
want mixed && python3 bench/consortium_lockstep.py --model "$S" --model embedded:llama-tiny --model embedded:neox-tiny \
  --model embedded:gpt2-tiny --rounds 5 --seeds $MIXED_SEEDS --policies $MIXED_POLICIES --shard-size 600 \
  --generation-batch 128 --parallel 9 --workdir "$W/mixed" --out "$W/mixed.json" >/dev/null 2>"$W/mixed.log" &
want smollm2only && python3 bench/consortium_lockstep.py --model "$S" --model "$S" --model "$S" --model "$S" --rounds 5 --seeds 0 \
  --policies knexa local-only --shard-size 600 --humaneval --generation-batch 128 --parallel 2 \
  --workdir "$W/smollm2only" --out "$W/smollm2only.json" >/dev/null 2>"$W/smollm2only.log" &
while [ -n "$(jobs -rp)" ] && [ $(( $(date +%s) - start )) -lt "$DEADLINE_S" ]; do
  sleep 5
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >>"$W/gpu.csv" 2>/dev/null
done
echo "stopped at $(( $(date +%s) - start )) s; still running: $(jobs -rp | wc -l)"
pkill -f consortium_lockstep.py; pkill -f pretrained_humaneval.py; sleep 2
for part in mixed smollm2only; do
  want $part || continue
  [ -s "$W/$part.json" ] || python3 bench/consortium_lockstep.py --collect "$W/$part" >"$W/$part.json" 2>>"$W/$part.log"
done
cp "$W/humaneval.json" "$W/mixed.json" "$W/smollm2only.json" "$OUT/" 2>/dev/null
tail -c 200000 "$W/mixed.log" >"$OUT/mixed.log"; tail -c 200000 "$W/smollm2only.log" >"$OUT/smollm2only.log"
tar -C "$W" -czf "$OUT/logs.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='smollm2' \
  mixed smollm2only humaneval.log he.jsonl gpu.csv 2>/dev/null
cat "$W/humaneval.json"; grep -v '^\[' "$W/mixed.log" | tail -12; grep -v '^\[' "$W/smollm2only.log" | tail -8
