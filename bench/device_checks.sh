#!/usr/bin/env bash
# The GPU checks of one session on a lent GPU machine that has no Rust and no network, run from
# the prebuilt binary: the synthetic comparisons with the CPU reference (exact, bf16, int8; with
# and without weight staging), the model-coverage fixtures, the real model's golden decodes,
# refusals and speeds, and each precision's agreement with Hugging Face's goldens. It prints
# one summary table last; every log goes to $OUT (or /tmp/amk-checks).
#
# The real model (98 MB) is larger than what one call to such a machine may carry (64 MiB with
# the tracked tree, about 34 MB, and the stripped binary, about 10 MB), so it travels in parts
# through an ignored folder, .devcarry/, one part a call:
#
#   bench/device_checks.sh split [GGUF]   # here: strip the binary, cut the GGUF (default: amk's
#                                         # cache) into parts that fit beside the tree and binary
#   bench/device_checks.sh stage          # there, one call per part but the last; `carry`
#                                         # names target/release/amk and that part's path
#   bench/device_checks.sh check          # there, the last call (carrying the last part and
#                                         # the .sha256): join, verify, import, check
#
# Parts wait in $AMK_MODEL_PARTS (default /tmp/amk-model-parts) on the machine while it is
# held, so each call must follow the last within the machine's idle time.
#
# AMK_CHECKS (space-separated step names) runs only those steps of `check`: synthetic,
# synthetic-no-stage, fixtures, model, agree, agree-mixed (each precision's agreement under two
# per-op plans: a bf16 build with an int8 LM head, and with int8 attention and LM head).
set -uo pipefail
cd "$(dirname "$0")/.."

AMK=${AMK:-target/release/amk}
CARRY=.devcarry
PARTS=${AMK_MODEL_PARTS:-/tmp/amk-model-parts}
LOGS=${OUT:-/tmp/amk-checks}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf

die() { echo "device_checks: $*" >&2; exit 2; }

case "${1:-}" in
split)
  gguf=${2:-${AMK_CACHE_DIR:-$HOME/.cache/amk}/models/smollm2/$NAME}
  [ -f "$gguf" ] || die "no GGUF at $gguf (run: cargo xtask fetch-model smollm2)"
  [ -x "$AMK" ] || die "no $AMK: cargo build --release -p amk-cli first"
  strip "$AMK" 2>/dev/null || echo "device_checks: could not strip $AMK; it travels as it is" >&2
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  room=$(( 64 * 1024 * 1024 - tree - $(stat -c %s "$AMK") - 2000000 ))
  [ "$room" -gt 1000000 ] || die "no room left for a model part beside the tree and $AMK"
  rm -rf "$CARRY" && mkdir -p "$CARRY" || die "cannot create $CARRY"
  split -b "$room" "$gguf" "$CARRY/$NAME.part-" || die "split failed"
  sha256sum "$gguf" | cut -d' ' -f1 > "$CARRY/$NAME.sha256"
  ls -l "$CARRY"
  echo "parts of $room bytes: one call per part, each carrying $AMK and that part's path;"
  echo "stage for all but the last, then check (carrying the last part and the .sha256)"
  ;;
stage)
  mkdir -p "$PARTS" || die "cannot create $PARTS"
  found=0
  for p in "$CARRY"/$NAME.part-* "$CARRY"/$NAME.sha256; do
    [ -f "$p" ] && cp "$p" "$PARTS/" && found=1
  done
  [ "$found" = 1 ] || die "nothing to stage in $CARRY"
  ls -l "$PARTS"
  ;;
check)
  [ -x "$AMK" ] || die "no $AMK: build it with cargo build --release -p amk-cli and carry it"
  mkdir -p "$LOGS" "$PARTS" || die "cannot create $LOGS"
  for p in "$CARRY"/$NAME.part-* "$CARRY"/$NAME.sha256; do
    [ -f "$p" ] && cp "$p" "$PARTS/"
  done
  gguf="$PARTS/$NAME"
  cat "$PARTS"/$NAME.part-* > "$gguf" 2>/dev/null || die "no model parts in $PARTS"
  if [ -f "$PARTS/$NAME.sha256" ] && [ "$(sha256sum "$gguf" | cut -d' ' -f1)" != "$(cat "$PARTS/$NAME.sha256")" ]; then
    die "the joined GGUF's sha256 differs: a part is missing or stale (ls $PARTS)"
  fi
  hf=/tmp/amk-hf
  "$AMK" import-gguf "$gguf" -o "$hf" --overwrite > "$LOGS/import.log" 2>&1 || die "import failed: $(tail -3 "$LOGS/import.log")"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader > "$LOGS/gpu.txt" 2>&1 \
    || echo "no nvidia-smi here" > "$LOGS/gpu.txt"
  summary=()
  step() { # name, command...
    local name=$1; shift
    case " ${AMK_CHECKS:-$name} " in *" $name "*) ;; *) return ;; esac
    local t0=$SECONDS
    "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    local last
    last=$(grep -E 'passed, [0-9]+ failed|total ' "$LOGS/$name.log" | tail -1 | sed 's/^ *//')
    [ -n "$last" ] || last=$(tail -1 "$LOGS/$name.log" | cut -c1-100)
    [ "$rc" = 0 ] || failed=1
    summary+=("$(printf '%-22s rc %-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$last")")
  }
  failed=0
  step synthetic "$AMK" gpu-test --synthetic
  step synthetic-no-stage "$AMK" gpu-test --synthetic --no-stage
  step fixtures "$AMK" gpu-test --fixtures fixtures/tiny
  step model "$AMK" gpu-test --model "$hf" --json-out "$LOGS/gpu-test.json"
  step agree "$AMK" agree "$hf" --backend gpu --precision f32,bf16,int8 --json "$LOGS/agree.json"
  printf '(precision: (lm_head: Some(Int8)))' > "$LOGS/head-int8.ron"
  printf '(precision: (attention: Some(Int8), lm_head: Some(Int8)))' > "$LOGS/attn-head-int8.ron"
  step agree-mixed bash -c "\"$AMK\" agree $hf --backend gpu --precision bf16 --config $LOGS/head-int8.ron \
    && \"$AMK\" agree $hf --backend gpu --precision bf16 --config $LOGS/attn-head-int8.ron"
  echo
  cat "$LOGS/gpu.txt"
  grep -E 'speed, context' "$LOGS/model.log"
  printf '%s\n' "${summary[@]}"
  exit "$failed"
  ;;
*)
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 2
  ;;
esac
