import re, subprocess, sys, collections
data, comms = sys.argv[1], sys.argv[2]
out = subprocess.run(["perf","report","-i",data,"--no-children","--comm",comms,"--sort","dso,symbol","--stdio","-g","none","--percentage","relative","-F","overhead,dso,sym"],capture_output=True,text=True).stdout
rules = [
 ("kernel (syscalls, TCP loopback, scheduler, irq)", r"\[k\]"),
 ("malloc/free (glibc)", r"(_int_malloc|\bmalloc\b|_int_free|cfree|\bfree\b|realloc|unlink_chunk|malloc_consolidate|calloc|tcache|_int_realloc|malloc_trim|sysmalloc|arena)"),
 ("memcpy/memmove/memset (libc)", r"(memcpy|memmove|memset|memcmp|strlen|__memchr|memchr)"),
 ("template rendering (askama, time fmt, String collect)", r"(askama|time::formatting|time::format|FromIterator<char>|ComputeMetadata|core::fmt|String as core::fmt::Write|itoa)"),
 ("TLS to Postgres (rustls/ring)", r"(ring_core|\bring::|rustls|aes_gcm|gcm_|chacha|sha256_block|ChunkVecBuffer)"),
 ("tracing (disabled spans/Instrumented)", r"tracing"),
 ("sqlx (Postgres driver)", r"sqlx"),
 ("moka (local cache tier)", r"(moka|crossbeam|quanta|tagptr)"),
 ("axum/tower/tower-http", r"(axum|tower)"),
 ("hyper/http/httparse", r"(hyper|httparse|\bhttp::|h2::|want::)"),
 ("tokio runtime", r"(tokio|mio::)"),
 ("sha256/hex (page cache keys, etag)", r"(sha2|Sha256|hex::|compress256|sha256)"),
 ("serde/serde_json", r"serde"),
 ("uuid (request id)", r"(uuid|getrandom|rand)"),
 ("hearth code (not inlined elsewhere)", r"hearth::"),
 ("futures/bytes/alloc/core/std", r"(futures|bytes::|alloc::|core::|std::|hashbrown)"),
]
tot = collections.Counter(); ex = collections.defaultdict(list)
for line in out.splitlines():
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+(\[.\])\s+(.*)", line)
    if not m: continue
    pct, dso, kind, sym = float(m[1]), m[2], m[3], m[4].strip()
    s = kind + " " + sym + " " + dso
    for name, rx in rules:
        if re.search(rx, s):
            tot[name] += pct; ex[name].append((pct, sym)); break
    else:
        tot["other ("+dso+")"] += pct; ex["other ("+dso+")"].append((pct, sym))
for k, v in tot.most_common():
    print(f"{v:6.2f}%  {k}   e.g. " + "; ".join(f"{s[:60]} {p:.2f}" for p, s in sorted(ex[k], reverse=True)[:3]))
