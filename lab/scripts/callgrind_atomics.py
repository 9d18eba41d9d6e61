#!/usr/bin/env python3
"""Atomic read-modify-writes per unit of work, from two callgrind profiles (`--dump-instr=yes`).

usage: callgrind_atomics.py SMALL.out LARGE.out N BINARY

Counts the executions, in LARGE minus SMALL and divided by N, of the instructions of BINARY
that lock the bus: `lock`-prefixed ones and `xchg` with a memory operand (implicitly locked).
An instruction count treats these as one instruction each, but each costs tens of cycles, so
the count says what the instructions column cannot. Code in shared libraries is not counted.
Used by lab/scripts/task-cost.sh.
"""
import re
import subprocess
import sys

from callgrind_instr import parse


def locked_addresses(binary):
    """The addresses of BINARY's locked instructions, from `objdump -d`."""
    dump = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True
    ).stdout
    found = set()
    for line in dump.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+(.*)", line)
        if not m:
            continue
        text = m.group(2)
        if text.startswith("lock ") or (text.startswith("xchg") and "(" in text):
            found.add(int(m.group(1), 16))
    return found


def main():
    small, large, n, binary = sys.argv[1:5]
    a, b = parse(small), parse(large)
    locked = locked_addresses(binary)
    total = sum(b[key] - a.get(key, 0) for key in b if key[1] in locked)
    print(f"{total / float(n):.2f}")


if __name__ == "__main__":
    main()
