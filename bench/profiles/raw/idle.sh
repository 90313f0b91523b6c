#!/usr/bin/env bash
# waits until the machine is >= 90% idle over 2 s (max 300 s); prints the idle %
for i in $(seq 1 150); do
  read -r _ a b c d e f g h _ < /proc/stat; t1=$((a+b+c+d+e+f+g+h)); i1=$((d+e)); sleep 2
  read -r _ a b c d e f g h _ < /proc/stat; t2=$((a+b+c+d+e+f+g+h)); i2=$((d+e))
  idle=$(( 100*(i2-i1)/(t2-t1) )); [ $idle -ge 90 ] && { echo "idle=$idle%"; exit 0; }
done; echo "NOT IDLE ($idle%)"; ps -eo pcpu,args --sort=-pcpu | head -3 | cut -c1-120
