#!/usr/bin/env bash
# top.sh perf.data comm N [extra]
perf report -i "$1" --no-children --comm "$2" --sort symbol --stdio -g none --percentage relative 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/ *- *- *$//; s/ *$//' | cut -c1-170 | head -"${3:-30}"
