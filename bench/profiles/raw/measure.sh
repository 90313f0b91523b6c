#!/usr/bin/env bash
# usage: measure.sh <name> <path> <conns> <dur> [mode: plain|fp|dwarf]
name=$1; path=$2; c=$3; d=$4; mode=${5:-plain}
HP=$(cat /tmp/prof/hearth.pid)
URL=http://127.0.0.1:8110$path
out=/tmp/prof/$name-$mode
/tmp/prof/idle.sh > $out.idle; wrk -t2 -c$c -d3s --timeout 10s $URL >/dev/null 2>&1
sleep 1
( pidstat -u $((d-2)) 1 > $out.pidstat 2>&1 ) &
PS=$!
case $mode in
  fp) ( sleep 1; perf record -F 499 -a -g -o $out.perf.data -- sleep $((d-2)) >$out.perf.log 2>&1 ) & PP=$!;;
  dwarf) ( sleep 1; perf record -F 499 -p $HP --call-graph dwarf,32768 -o $out.perf.data -- sleep $((d-2)) >$out.perf.log 2>&1 ) & PP=$!;;
esac
wrk -t2 -c$c -d${d}s --timeout 10s --latency -s /work/main/bench/clients/wrk_json.lua $URL > $out.wrk 2>&1
wait $PS
[ -n "$PP" ] && wait $PP
grep '^{' $out.wrk
