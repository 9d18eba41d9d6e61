#!/usr/bin/env python3
"""Per-instruction difference of two callgrind profiles (`--dump-instr=yes`), annotated.

usage: callgrind_instr.py SMALL.out LARGE.out PATTERN N BINARY

For every function whose name matches PATTERN, the self cost (Ir) of each instruction in
LARGE minus SMALL, divided by N, is printed beside the instruction, with the source line
that `objdump -d -l` attributes it to. Used by lab/scripts/hot-path.sh.
"""
import collections
import os
import re
import subprocess
import sys


def parse(path):
    """(function name, address) -> Ir, from callgrind's compressed format."""
    cost = collections.Counter()
    names = {}
    fn = None
    addr = 0
    after_calls = False
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r"(c?)(ob|fl|fi|fe|fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            is_call, kind, ident, name = m.groups()
            if name:
                names[(kind, ident)] = name
            if kind == "fn" and not is_call:
                fn = names.get(("fn", ident), ident)
            continue
        if line.startswith("calls="):
            after_calls = True  # the next cost line is the call's inclusive cost
            continue
        m = re.match(r"([+-]\d+|\*|0x[0-9a-f]+)\s+([+-]\d+|\*|\d+)\s*(\d+)?", line)
        if not m:
            continue
        position, _line, ir = m.groups()
        if position.startswith("0x"):
            addr = int(position, 16)
        elif position != "*":
            addr += int(position)
        if after_calls:
            after_calls = False
            continue
        if ir:
            cost[(fn, addr)] += int(ir)
    return cost


def short_path(path):
    """`src/entry.rs:131`, `core/src/cell.rs:2066`, `slab-0.4.12/src/lib.rs:757`."""
    cwd = os.getcwd() + "/"
    if path.startswith(cwd):
        return path[len(cwd):]
    for marker in ("/library/", "/registry/src/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/registry/src/" else rest
    return path


def main():
    small, large, pattern, n, binary = sys.argv[1:6]
    a, b = parse(small), parse(large)
    per = {
        key: (b[key] - a[key]) / float(n)
        for key in set(a) | set(b)
        if re.search(pattern, str(key[0]))
    }
    per = {key: v for key, v in per.items() if abs(v) >= 0.4}
    if not per:
        sys.exit(f"no instructions of a function matching {pattern!r}")
    for name in sorted({key[0] for key in per}):
        addrs = sorted(addr for (fn, addr) in per if fn == name)
        total = sum(per[(name, addr)] for addr in addrs)
        print(f"== {name}: {total:.1f} instructions per round trip")
        dump = subprocess.run(
            ["objdump", "-d", "-l", "--no-show-raw-insn", "-C",
             f"--start-address={addrs[0]:#x}", f"--stop-address={addrs[-1] + 1:#x}", binary],
            capture_output=True, text=True, check=True,
        ).stdout
        source = ""
        for line in dump.splitlines():
            m = re.match(r"\s+([0-9a-f]+):\s+(.*)", line)
            if m:
                addr = int(m.group(1), 16)
                if (name, addr) in per:
                    print(f"{per[(name, addr)]:6.1f}  {m.group(2)[:56]:56}  {source}")
            elif line.startswith("/"):
                source = short_path(line.strip())


if __name__ == "__main__":
    main()
