#!/usr/bin/env python3
"""Write BYTES non-zero bytes to a new file in blocks of --block-kib KiB, then fsync: a write floor
whose block size matches soup-merge's positioned writes (128 KiB for 2-byte dtypes by default).

    python3 write_blocks.py PATH BYTES [--block-kib 128] [--no-fsync]

On virtual machines that hand free memory back to the hypervisor, large writes into fresh page cache
can be several times slower than small ones, so the block size is part of the floor (BENCHMARKS.md).
"""
import argparse
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("bytes", type=int)
    ap.add_argument("--block-kib", type=int, default=128)
    ap.add_argument("--no-fsync", action="store_true")
    a = ap.parse_args()
    size = a.block_kib << 10
    pattern = bytes(i % 251 + 1 for i in range(4096))
    block = memoryview((pattern * (size // len(pattern) + 1))[:size])
    fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        offset = 0
        while offset < a.bytes:
            offset += os.pwrite(fd, block[: min(size, a.bytes - offset)], offset)
        if not a.no_fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
