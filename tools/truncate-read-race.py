#!/usr/bin/env python3
"""Readers against a writer that rewrites a file, every third time after a truncate by path.

    tools/truncate-read-race.py FILE cached|direct [notrunc]

Three threads read 4 KiB pages at random offsets of FILE (256 KiB), `cached` through the
page cache (dropping it every fourth read) or `direct` with O_DIRECT, while the main thread
writes generation 2, 3, ... (every byte of the file = the generation) 250 times. A page
read must hold only generations at least as new as the last write finished before the
read started. Prints the number of pages that did not, and the first five as (offset,
value, least generation, bytes read, zero bytes). On any FUSE filesystem in `cached` mode
a page of zeros can come back beside a truncate (a READ sent before it, answered after it,
is zero-filled by the kernel): docs/benchmarks.md, 2026-12-04 evening.
"""
import mmap, os, random, sys, threading, time

p, mode = sys.argv[1], sys.argv[2]
direct = mode == "direct"
truncate = "notrunc" not in sys.argv[3:]
LEN = 256 << 10
done = [1]
stop = [False]
bad = []


def reader(seed):
    r = random.Random(seed)
    fd = os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    n = 0
    while not stop[0]:
        if not direct and n % 4 == 0:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        n += 1
        off = r.randrange(LEN // 4096) * 4096
        least = done[0]
        k = os.preadv(fd, [buf], off)
        if k and any(x < least for x in set(buf[:k])):
            bad.append((off, min(buf[:k]), least, k, buf[:k].count(0)))
    os.close(fd)


with open(p, "wb") as f:
    f.write(bytes([1]) * LEN)
threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
for t in threads:
    t.start()
g, t0 = 1, time.time()
while time.time() - t0 < 4 and g < 250:
    g += 1
    if truncate and g % 3 == 0:
        os.truncate(p, 0)
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, bytes([g]) * LEN, 0)
    os.close(fd)
    done[0] = g
    time.sleep(0.002)
stop[0] = True
for t in threads:
    t.join()
print("generations", g, "bad pages", len(bad), bad[:5])
sys.exit(1 if bad else 0)
