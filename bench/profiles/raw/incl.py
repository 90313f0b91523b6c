import sys, re
f, pats = sys.argv[1], sys.argv[2:]
tot = 0; hits = {p: 0 for p in pats}
for line in open(f):
    stack, n = line.rstrip().rsplit(' ', 1); n = int(n); tot += n
    for p in pats:
        if re.search(p, stack): hits[p] += n
for p in pats: print(f"{100*hits[p]/tot:6.2f}%  {p}")
print("samples", tot)
