#!/usr/bin/env bash
# The CUDA engine path, checked on a machine with NVIDIA GPUs (the CPU build cannot show it):
#
#   scripts/gpu-check.sh            # from the repository root, with network access to PyPI
#
# It installs the neuron with the CUDA vLLM into a scratch environment, builds two tiny
# models, starts a neuron on loopback, loads both on GPU 0 (the second on a GPU that
# already holds the first), chats with both, unloads both and checks NVML shows the
# memory back; then sleep as an eviction tier (vLLM's sleep mode): load one, put it to
# sleep, load the other, wake the first with a load, chat with it, with NVML's figure at
# each step; with two GPUs or more, a tensor-parallel load across two. One line per
# step; the first failure stops it with a non-zero status and the neuron's log.
#
# Written on a machine without GPUs: `bash -n` checks its syntax there; the steps
# themselves run only here.
#
# GPU_CHECK_DIR keeps the scratch folder (default: a new temporary one, removed at the
# end); PIP_FIND_LINKS / UV_FIND_LINKS point at local wheels where PyPI is out of reach.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${GPU_CHECK_DIR:-$(mktemp -d -t cortex-gpu-check.XXXXXX)}"
KEEP="${GPU_CHECK_DIR:+yes}"
PORT="${GPU_CHECK_PORT:-13199}"
URL="http://127.0.0.1:${PORT}"
NEURON_PID=""

step() { printf '%-64s ' "$1"; }
ok() { echo "ok${1:+ ($1)}"; }
fail() { # to stderr: it is seen even from inside $(...), whose exit status set -e then sees
    {
        echo "FAILED: $1"
        if [[ -f "$WORK/neuron.log" ]]; then
            echo "--- the neuron's log (last 40 lines) ---"
            tail -n 40 "$WORK/neuron.log"
        fi
    } >&2
    exit 1
}
cleanup() {
    if [[ -n "$NEURON_PID" ]] && kill -0 "$NEURON_PID" 2>/dev/null; then
        kill -TERM "$NEURON_PID" 2>/dev/null || true
        wait "$NEURON_PID" 2>/dev/null || true
    fi
    [[ -n "$KEEP" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# call METHOD PATH [JSON] -> the body; fails the step on a non-2xx answer
call() {
    local method="$1" path="$2" body="${3:-}" out status
    out="$WORK/answer.json"
    if [[ -n "$body" ]]; then
        status=$(curl -s -o "$out" -w '%{http_code}' -X "$method" "$URL$path" \
            -H 'content-type: application/json' -d "$body" --max-time 900) || status=000
    else
        status=$(curl -s -o "$out" -w '%{http_code}' -X "$method" "$URL$path" --max-time 60) \
            || status=000
    fi
    [[ "$status" == 2* ]] || fail "$method $path answered $status: $(head -c 400 "$out" 2>/dev/null)"
    cat "$out"
}
py() { "$WORK/venv/bin/python" -c "$1"; }
used_mib() { # GPU $1's used memory in MiB, as the neuron's NVML reading says
    call GET /devices | py "import json,sys; d=json.load(sys.stdin)['devices']; print([x['memory_used'] for x in d if x['index']==$1][0] >> 20)"
}

step "nvidia-smi sees GPUs"
command -v nvidia-smi >/dev/null || fail "nvidia-smi is not installed: no NVIDIA driver here"
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
[[ "$GPUS" -ge 1 ]] || fail "no GPU listed"
ok "$GPUS GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"

step "a scratch environment with the neuron and CUDA vLLM"
python3 -m venv "$WORK/venv" >/dev/null || fail "python3 -m venv failed"
"$WORK/venv/bin/python" -m pip install --quiet uv >"$WORK/install.log" 2>&1 \
    || fail "pip install uv: $(tail -n 3 "$WORK/install.log")"
UV_FIND_LINKS="${UV_FIND_LINKS:-${PIP_FIND_LINKS:-}}" "$WORK/venv/bin/python" -m uv pip install \
    --python "$WORK/venv/bin/python" --quiet ./packages/cortex-core './packages/neuron[vllm]' \
    transformers tokenizers >>"$WORK/install.log" 2>&1 \
    || fail "installing the neuron with vllm: $(tail -n 5 "$WORK/install.log")"
ok "$(py 'import vllm; print("vllm", vllm.__version__)')"

step "neuron check finds the GPUs"
"$WORK/venv/bin/neuron" devices >"$WORK/devices.txt" 2>&1 || fail "neuron devices: $(cat "$WORK/devices.txt")"
grep -q '^0 ' "$WORK/devices.txt" || fail "NVML shows no GPU 0: $(cat "$WORK/devices.txt")"
ok

step "two tiny models"
for name in one two; do
    "$WORK/venv/bin/python" -m neuron.testing.models tiny "$WORK/models/check/$name" \
        >>"$WORK/models.log" 2>&1 || fail "building check/$name: $(tail -n 3 "$WORK/models.log")"
done
ok "$WORK/models/check"

step "the neuron starts on ${URL}"
cat >"$WORK/neuron.toml" <<EOF
[neuron]
name = "gpu-check"
listen = "127.0.0.1:${PORT}"
advertise_url = "${URL}"
cache_dir = "$WORK/cache"
default_source = "local"
sleep_memory_gb = 4

[sources.local]
path = "$WORK/models"
EOF
"$WORK/venv/bin/neuron" serve --config "$WORK/neuron.toml" >"$WORK/neuron.log" 2>&1 &
NEURON_PID=$!
for _ in $(seq 1 120); do
    curl -sf "$URL/health" >/dev/null 2>&1 && break
    kill -0 "$NEURON_PID" 2>/dev/null || fail "the neuron exited"
    sleep 1
done
curl -sf "$URL/health" >/dev/null || fail "no /health after 120 s"
ok
BASELINE=$(used_mib 0)

for name in one two; do
    step "load check/$name on GPU 0"
    call POST /models/load "{\"model\": \"check/$name\", \"devices\": [0], \"options\": {\"max_model_len\": 512}}" \
        >/dev/null
    ok "GPU 0 uses $(used_mib 0) MiB"
done

chat_tokens() { # MODEL -> tokens generated for a short chat; fails the step on none
    local answer tokens
    answer=$(call POST /v1/chat/completions \
        "{\"model\": \"$1\", \"max_tokens\": 8, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}")
    tokens=$(echo "$answer" | py "import json,sys; print(json.load(sys.stdin)['usage']['completion_tokens'])")
    [[ "$tokens" -ge 1 ]] || fail "no tokens generated by $1"
    echo "$tokens"
}

for name in one two; do
    step "chat with check/$name"
    tokens=$(chat_tokens "check/$name")
    ok "$tokens tokens"
done

for name in one two; do
    step "unload check/$name"
    call POST /models/unload "{\"model\": \"check/$name\"}" >/dev/null
    ok
done

step "NVML shows the memory back"
sleep 2
AFTER=$(used_mib 0)
[[ "$AFTER" -le $((BASELINE + 256)) ]] || fail "GPU 0 uses $AFTER MiB, $BASELINE MiB before the loads"
ok "$AFTER MiB now, $BASELINE MiB before"

load_one() { # MODEL -> loads it on GPU 0, prints the seconds it took
    local began
    began=$(date +%s.%N)
    call POST /models/load "{\"model\": \"$1\", \"devices\": [0], \"options\": {\"max_model_len\": 512}}" \
        >/dev/null
    py "print(f'{$(date +%s.%N) - $began:.1f}')"
}
state_of() { # MODEL -> its state in /models
    call GET /models | py "import json,sys; print(next((m['state'] for m in json.load(sys.stdin)['models'] if m['id'] == '$1'), 'absent'))"
}

step "sleep: load check/one on GPU 0"
COLD_S=$(load_one check/one)
AWAKE=$(used_mib 0)
ok "cold load ${COLD_S} s; GPU 0 uses $AWAKE MiB"

step "sleep: put check/one to sleep"
answer=$(call POST /models/unload '{"model": "check/one", "sleep": true}')
slept=$(echo "$answer" | py "import json,sys; a=json.load(sys.stdin); print(a['state'], a['host_memory_bytes'] >> 20)")
[[ "$slept" == sleeping* ]] || fail "check/one did not sleep: $answer"
[[ "$(state_of check/one)" == sleeping ]] || fail "/models does not show check/one sleeping"
ASLEEP=$(used_mib 0)
[[ "$ASLEEP" -lt "$AWAKE" ]] || fail "GPU 0 uses $ASLEEP MiB asleep, $AWAKE MiB awake"
ok "GPU 0 uses $ASLEEP MiB (awake: $AWAKE); host memory held ${slept#sleeping } MiB"

step "sleep: load check/two while check/one sleeps"
load_one check/two >/dev/null
ok "GPU 0 uses $(used_mib 0) MiB"

step "sleep: wake check/one (a load of a sleeping model)"
starts() { grep -c 'starting engine .*model=check/one' "$WORK/neuron.log" || true; }
BEFORE_WAKE=$(starts)
WAKE_S=$(load_one check/one)
[[ "$(state_of check/one)" == ready ]] || fail "check/one is not ready after waking"
[[ "$(starts)" -eq "$BEFORE_WAKE" ]] || fail "waking check/one started an engine"
ok "woke in ${WAKE_S} s (its cold load: ${COLD_S} s); GPU 0 uses $(used_mib 0) MiB"

step "sleep: chat with check/one after waking"
tokens=$(chat_tokens check/one)
ok "$tokens tokens"

step "sleep: unload both; NVML shows the memory back"
for name in one two; do
    call POST /models/unload "{\"model\": \"check/$name\"}" >/dev/null
done
sleep 2
AFTER=$(used_mib 0)
[[ "$AFTER" -le $((BASELINE + 256)) ]] || fail "GPU 0 uses $AFTER MiB, $BASELINE MiB before the loads"
ok "$AFTER MiB now, $BASELINE MiB before"

if [[ "$GPUS" -ge 2 ]]; then
    step "a tensor-parallel load across GPUs 0 and 1"
    call POST /models/load \
        '{"model": "check/one", "options": {"tensor_parallel_size": 2, "max_model_len": 512}}' \
        >/dev/null
    ok "GPU 0 $(used_mib 0) MiB, GPU 1 $(used_mib 1) MiB"
    step "chat across both"
    call POST /v1/chat/completions \
        '{"model": "check/one", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}' \
        >/dev/null
    ok
    step "unload it"
    call POST /models/unload '{"model": "check/one"}' >/dev/null
    ok
else
    echo "(one GPU: the tensor-parallel step needs two)"
fi

echo "GPU check passed on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
