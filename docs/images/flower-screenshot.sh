#!/usr/bin/env bash
# Remakes docs/images/flower-tasks.png: a real worker embeds 500 commits (one poison record,
# so one chunk ends with a dead letter) while Flower watches; headless Chromium shoots the
# tasks page. Needs Redis and Debian's chromium (apt-get install chromium).
#   BROKER=redis://127.0.0.1:6379/11 docs/images/flower-screenshot.sh
# The Redis database is flushed first: use one of your own.
set -euo pipefail
cd "$(dirname "$0")/../.."
BROKER=${BROKER:?set BROKER to a Redis database of your own, e.g. redis://127.0.0.1:6379/11}
PORT=${PORT:-5599}
work=$(mktemp -d /tmp/flower-shot.XXXXXX)
export EMBEDFLEET_BROKER_URL=$BROKER EMBEDFLEET_DATABASE_URL=sqlite:///$work/ledger.db HF_HUB_OFFLINE=1
export PYTHONPATH=$PWD EMBEDFLEET_TORCH_THREADS=1
redis-cli -u "$BROKER" flushdb >/dev/null
# One record that poisons the model, as tests/workers/fault_encoders.py:PoisonEncoder knows it.
python3 - samples/celery_commits_500.jsonl "$work/corpus.jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
record = json.loads(lines[200]); record["title"] = "POISON-MARKER " + record["title"]
lines[200] = json.dumps(record)
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
# The real model, wrapped so that the marked record raises (tests/workers/fault_encoders.py).
EMBEDFLEET_ENCODER=tests.workers.fault_encoders:PoisonEncoder embedfleet worker -c 1 -n w1@%h \
  --without-mingle --without-gossip >"$work/worker.log" 2>&1 & pids+=($!)
embedfleet flower --no-auth --port "$PORT" --address=127.0.0.1 >"$work/flower.log" 2>&1 & pids+=($!)
until curl -fs "http://127.0.0.1:$PORT/metrics" | grep -q 'flower_worker_online{worker="w1@'; do sleep 1; done
embedfleet submit "$work/corpus.jsonl" --collection docs --fields title,description,files_touched \
  --chunk-size 64 --wait || true   # exits non-zero with dead letters
sleep 3   # the last events reach Flower
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,900 \
  --virtual-time-budget=5000 --screenshot="$work/shot.png" "http://127.0.0.1:$PORT/tasks" 2>/dev/null
cp "$work/shot.png" docs/images/flower-tasks.png
echo "docs/images/flower-tasks.png ($(stat -c %s docs/images/flower-tasks.png) bytes); logs in $work"
