#!/usr/bin/env bash
# Issue #21's table for one seed on this 2-core CPU: all eight entries of benchmarks/dataelixir_cifar10_fast.py with
# today's defaults and dataelixir.noise: per_image, in two single-threaded processes.
#
#   bash benchmarks/dataelixir_cifar10_fast_seed.sh SEED NAME [ATTACK ...]      # default: all eight attacks
#
# Phase 1: both processes fill one purification cache (every attack's even / odd candidate shards: the entries share
# 90 % of their images, so each image is purified once); process 0 then trains the seed's reference model.
# Phase 2: the entries, split in two lists of about equal cost (WaNet and BPP with the victim recipe's own
# augmentation, in their own work folder, as in docs/dataelixir.md). Finished entries (rows of NAME's table) are
# skipped in both phases, so a cut-short run resumes with the same command. Logs: runs/logs/NAME_seed<SEED>_p{0,1}.log.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:?usage: $0 SEED NAME [ATTACK ...]}
NAME=${2:?usage: $0 SEED NAME [ATTACK ...]}
shift 2
WANTED=${*:-clean badnets blended sig wanet bpp ftrojan ssba}
export OMP_NUM_THREADS=1
PY=${PYTHON:-.venv/bin/python}
B="$PY benchmarks/dataelixir_cifar10_fast.py --seed $SEED --threads 1 --name $NAME"
S="-s dataelixir.noise=per_image -s dataelixir.purification_cache=runs/purification-cache"
AUG_WORK=runs/dataelixir_cifar10_fast_recipe_aug
AUG="--work $AUG_WORK -s attack.options.wanet.post_transform=false -s attack.options.bpp.post_transform=false"
mkdir -p runs/logs

pick() { # the wanted attacks among "$@"
  local out=()
  for a in "$@"; do [[ " $WANTED " == *" $a "* ]] && out+=("$a"); done
  echo "${out[@]:-}"
}
PLAIN=$(pick clean badnets blended sig ftrojan ssba)
LOOP=$(pick wanet bpp)
LIST0=$(pick clean badnets blended ftrojan)   # ~ equal cost: the clean entry trains no victim and no retrained model
LIST1=$(pick sig ssba)

process() { # $1 = part
  local part=$1
  [ -n "$PLAIN" ] && $B $S --attacks $PLAIN --purify-only --part "$part/2"
  local ref=runs/dataelixir_cifar10_fast/seed$SEED/reference
  if [ "$part" = 0 ] && [ -f "$ref/classifier.json" ] && [ ! -e "$AUG_WORK/seed$SEED/reference" ]; then
    # the reference is the seed's, whatever the victims' augmentation: linked, not trained again
    mkdir -p "$AUG_WORK/seed$SEED"
    cp -al "$ref" "$AUG_WORK/seed$SEED/reference"
  fi
  [ -n "$LOOP" ] && $B $S $AUG --attacks $LOOP --purify-only --part "$part/2"
  if [ "$part" = 0 ]; then
    [ -n "$LIST0" ] && $B $S --attacks $LIST0
  else
    [ -n "$LIST1" ] && $B $S --attacks $LIST1
    if [ -n "$LOOP" ]; then
      while [ ! -f "$AUG_WORK/seed$SEED/reference/classifier.json" ]; do sleep 30; done
      $B $S $AUG --attacks $LOOP
    fi
  fi
  echo "process $part done"
}

process 0 > "runs/logs/${NAME}_seed${SEED}_p0.log" 2>&1 &
P0=$!
process 1 > "runs/logs/${NAME}_seed${SEED}_p1.log" 2>&1 &
P1=$!
wait $P0 $P1
echo "seed $SEED: table in benchmarks/results/$NAME.json, docs/results/$NAME.md"
