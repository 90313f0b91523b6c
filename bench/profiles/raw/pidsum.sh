#!/usr/bin/env bash
# sums %usr %system %CPU of the Average lines by command
awk '/^Average:/ && $3 ~ /^[0-9]+$/ {u[$NF]+=$4; s[$NF]+=$5; c[$NF]+=$8; n[$NF]++} END {for (k in c) printf "%-16s n=%-3d usr=%6.1f sys=%6.1f cpu=%6.1f\n", k, n[k], u[k], s[k], c[k]}' "$1" | sort -t= -k5 -nr
