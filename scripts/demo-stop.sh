#!/usr/bin/env bash
# Stop what `make demo` started: the gateway, then the neuron (which stops its
# engines); then make sure nothing of theirs is left.
set -uo pipefail
cd "$(dirname "$0")/.."
DEMO=.cache/demo
stopped=0
for name in gateway neuron; do
    pidfile="$DEMO/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        # Remember its children (the neuron's engine processes) before it goes.
        children=$(pgrep -P "$pid" | xargs -r -I{} sh -c 'echo {}; pgrep -P {}' | sort -u)
        kill -TERM "$pid"
        for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name did not stop in 60 s: killing it"
            kill -KILL "$pid"
        fi
        for child in $children; do
            kill -0 "$child" 2>/dev/null && kill -KILL "$child"
        done
        echo "$name stopped"
        stopped=1
    fi
    rm -f "$pidfile"
done
[ "$stopped" = 1 ] || echo "the demo was not running"
