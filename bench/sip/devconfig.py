"""Writes the bench's portcullis dev config to argv[1]: configs/dev.yaml on
equal terms with Kamailio, MD5 digest (as Kamailio's auth module), and the
edge's per-source limits lifted (every load connection comes from
127.0.0.1). Used by run.sh and ab.sh."""
import sys

s = open("configs/dev.yaml").read()
for old, new in (
    ("algorithms: [SHA-256, MD5]", "algorithms: [MD5]"),
    ("    home_domains: [example.test]\n",
     "    home_domains: [example.test]\n    limits: {requests_per_second: 1000000, burst: 1000000, connections_per_address: 100000, max_connections: 100000}\n"),
):
    if old not in s:
        sys.exit(f"configs/dev.yaml no longer has {old.strip()!r}: update bench/sip/devconfig.py")
    s = s.replace(old, new)
open(sys.argv[1], "w").write(s)
