#!/usr/bin/env bash
# Issue 7: keeps the machine warm while the arms train; returns when all four exported or after WAIT_S.
set -uo pipefail
WAIT_S=${WAIT_S:-540}; end=$((SECONDS + WAIT_S))
while [ $SECONDS -lt $end ]; do
  done_n=$(ls -d /root/arms/*/export 2>/dev/null | wc -l); [ "$done_n" -ge 4 ] && break; sleep 15
done
for arm in silu relu prosparse drelu; do echo "$arm: $(tail -c 300 /root/arms_$arm.log | tr '\r' '\n' | grep -av '^$' | tail -1)"; done
