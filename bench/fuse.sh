#!/usr/bin/env bash
# The FUSE mount beside its baselines, on a fresh 3-member cluster whose member 1 (the founder, so the leader) mounts
# the file system:
#   BIN=target/release bench/fuse.sh            # SIZE_MIB=1024 FILES=1000 LIST=10000
# Prints, through the mount and in a local directory on the same disk: sequential write (then fsync) and read MiB/s of
# one SIZE_MIB file (the kernel's caches dropped before the read), small files created (100 bytes each, closed),
# stat'ed and unlinked per second, and `ls -l` of a directory of LIST entries; then `pando bench blob` on the same
# bytes (blob add and get through the CLI, node-to-node copy, plain BLAKE3 and a raw iroh stream).
set -euo pipefail
BASE=${BASE:-${TMPDIR:-/tmp}/pandofuse}
SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-1000}
LIST=${LIST:-10000}
MOUNT="$BASE/mnt"
LOCAL="$BASE/local"
mkdir -p "$BASE"
fusermount3 -uz "$MOUNT" 2>/dev/null || true
rm -rf "$MOUNT" "$LOCAL" && mkdir -p "$MOUNT" "$LOCAL"
export NODE1_ARGS="--mount $MOUNT"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
trap 'stop; fusermount3 -uz "$MOUNT" 2>/dev/null || true' EXIT
start 3
for _ in $(seq 1 100); do grep -q " $MOUNT " /proc/self/mountinfo && break; sleep 0.1; done
head -c $((SIZE_MIB << 20)) /dev/urandom >"$BASE/src.bin"
python3 - "$BASE/src.bin" "$MOUNT" "$LOCAL" "$FILES" "$LIST" <<'PY'
import os, subprocess, sys, time
src, mount, local, files, listed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
BLOCK = 1 << 20
size = os.path.getsize(src)

def drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass

def timed(what, f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start

def sequential(root):
    path = os.path.join(root, "big.bin")
    def write():
        with open(src, "rb") as i, open(path, "wb") as o:
            while block := i.read(BLOCK):
                o.write(block)
            o.flush()
            os.fsync(o.fileno())
    w = timed("write", write)
    drop_caches()
    def read():
        with open(path, "rb") as i:
            while i.read(BLOCK):
                pass
    r = timed("read", read)
    os.unlink(path)
    return size / w / BLOCK, size / r / BLOCK

def small(root):
    d = os.path.join(root, "small")
    os.mkdir(d)
    names = [os.path.join(d, f"f{n}") for n in range(files)]
    def create():
        for name in names:
            with open(name, "wb") as o:
                o.write(b"x" * 100)
    c = timed("create", create)
    drop_caches()
    s = timed("stat", lambda: [os.stat(name) for name in names])
    u = timed("unlink", lambda: [os.unlink(name) for name in names])
    os.rmdir(d)
    return files / c, files / s, files / u

def listing(root):
    d = os.path.join(root, "listed")
    os.mkdir(d)
    for n in range(listed):
        os.close(os.open(os.path.join(d, f"entry-{n:06}"), os.O_CREAT | os.O_WRONLY))
    drop_caches()
    cold = timed("ls", lambda: subprocess.run(["ls", "-l", d], stdout=subprocess.DEVNULL, check=True))
    warm = timed("ls", lambda: subprocess.run(["ls", "-l", d], stdout=subprocess.DEVNULL, check=True))
    return cold, warm

for name, root in (("mount", mount), ("local", local)):
    w, r = sequential(root)
    c, s, u = small(root)
    cold, warm = listing(root)
    print(f"{name}: {size / BLOCK:.0f} MiB write+fsync {w:.1f} MiB/s, read {r:.1f} MiB/s; {files} small files: "
          f"create {c:.0f}/s, stat {s:.0f}/s, unlink {u:.0f}/s; ls -l of {listed} entries {cold:.2f} s cold, {warm:.2f} s warm")
PY
"$BIN/pando" bench blob --file "$BASE/src.bin"
