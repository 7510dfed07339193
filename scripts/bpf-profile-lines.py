#!/usr/bin/env python3
"""Where a loaded BPF program spends its time, by source line.

perf samples a JIT-compiled BPF program as `bpf_prog_<tag>_<name>+0x<offset>`; this maps
each sample's offset to the C source line it came from (the kernel's jited_line_info and
`bpftool prog dump xlated linum`), and for samples taken inside a helper or map function
names that callee, charged to the line that called it. Needs root, bpftool, and a program
built with -g (sluice's are).

    perf record -a -g -o perf.data -- sleep 3          # while the load runs
    perf script -i perf.data > stacks.txt
    scripts/bpf-profile-lines.py <prog id> stacks.txt [--top 40]

The program id is in `bpftool prog show` (name from_container, to_container, ...).
"""

import argparse
import bisect
import collections
import ctypes
import re
import struct
import subprocess
import sys

SYS_BPF = 321  # x86-64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
# Offsets in struct bpf_prog_info (include/uapi/linux/bpf.h).
INFO_SIZE = 232
NR_JITED_KSYMS, JITED_KSYMS = 104, 112
NR_JITED_FUNC_LENS, JITED_FUNC_LENS = 108, 120
NR_LINE_INFO, LINE_INFO = 148, 152
JITED_LINE_INFO, NR_JITED_LINE_INFO = 160, 168
LINE_INFO_REC_SIZE, JITED_LINE_INFO_REC_SIZE = 172, 176
U32_FIELDS = {NR_JITED_KSYMS, NR_JITED_FUNC_LENS, NR_LINE_INFO, NR_JITED_LINE_INFO, LINE_INFO_REC_SIZE,
              JITED_LINE_INFO_REC_SIZE}

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(SYS_BPF, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        sys.exit(f"bpf command {cmd}: {ctypes.c_char_p(libc.strerror(err)).value.decode()}")
    return fd


def prog_info(fd, fields=()):
    info = ctypes.create_string_buffer(INFO_SIZE)
    for offset, value in fields:
        struct.pack_into("I" if offset in U32_FIELDS else "Q", info, offset, value)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, INFO_SIZE, ctypes.addressof(info)))
    return info


def u32(buf, offset):
    return struct.unpack_from("I", buf, offset)[0]


def line_table(prog_id):
    """Sorted (JIT address, source line) pairs, and each function's (start, end) address."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("III", prog_id, 0, 0))
    info = prog_info(fd)
    n_lines, n_jited = u32(info, NR_LINE_INFO), u32(info, NR_JITED_LINE_INFO)
    line_size, jited_size = u32(info, LINE_INFO_REC_SIZE), u32(info, JITED_LINE_INFO_REC_SIZE)
    n_ksyms, n_lens = u32(info, NR_JITED_KSYMS), u32(info, NR_JITED_FUNC_LENS)
    if not n_lines or not n_jited:
        sys.exit(f"program {prog_id} has no line info (built without -g?) or is not JITed")
    lines = ctypes.create_string_buffer(n_lines * line_size)
    jited = ctypes.create_string_buffer(n_jited * jited_size)
    ksyms = ctypes.create_string_buffer(n_ksyms * 8)
    lens = ctypes.create_string_buffer(n_lens * 4)
    prog_info(fd, [
        (NR_LINE_INFO, n_lines), (LINE_INFO, ctypes.addressof(lines)),
        (LINE_INFO_REC_SIZE, line_size), (NR_JITED_LINE_INFO, n_jited),
        (JITED_LINE_INFO, ctypes.addressof(jited)), (JITED_LINE_INFO_REC_SIZE, jited_size),
        (NR_JITED_KSYMS, n_ksyms), (JITED_KSYMS, ctypes.addressof(ksyms)),
        (NR_JITED_FUNC_LENS, n_lens), (JITED_FUNC_LENS, ctypes.addressof(lens)),
    ])
    insn_of_line = [u32(lines, i * line_size) for i in range(n_lines)]
    address_of_line = [struct.unpack_from("Q", jited, i * jited_size)[0] for i in range(n_jited)]
    functions = [(struct.unpack_from("Q", ksyms, i * 8)[0], u32(lens, i * 4))
                 for i in range(min(n_ksyms, n_lens))]
    functions = [(start, start + length) for start, length in functions]

    # bpftool prints each line's source as "; text [file:... line_num:N ...]" before its
    # first instruction.
    source_of_insn, current = {}, None
    dump = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                          capture_output=True, text=True, check=True).stdout
    for text in dump.splitlines():
        if text.startswith("; "):
            current = text[2:].strip()
            continue
        m = re.match(r"\s*(\d+):", text)
        if m and current is not None:
            source_of_insn.setdefault(int(m.group(1)), current)
    table = sorted((address_of_line[i], source_of_insn.get(insn_of_line[i], "?"))
                   for i in range(min(n_lines, n_jited)))
    return table, functions


def samples(path):
    """Each sample's stack, leaf first, as (symbol, offset, address) triples."""
    stack = []
    with open(path) as f:
        for text in f:
            if text and not text[0].isspace():
                if stack:
                    yield stack
                stack = []
                continue
            fields = text.split()
            if len(fields) >= 2:
                m = re.match(r"(.+)\+0x([0-9a-f]+)$", fields[1])
                if m:
                    stack.append((m.group(1), int(m.group(2), 16), int(fields[0], 16)))
    if stack:
        yield stack


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prog_id", type=int)
    parser.add_argument("perf_script", help="the output of `perf script`")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()

    table, functions = line_table(args.prog_id)
    addresses = [a for a, _ in table]
    name = subprocess.run(["bpftool", "prog", "show", "id", str(args.prog_id)],
                          capture_output=True, text=True, check=True).stdout
    prog_name = re.search(r"name (\S+)", name).group(1)
    # A frame is this program's when its address lies in one of its functions (the main one
    # or a noinline subprogram; perf's names for them need not carry bpftool's tag).
    def ours(address):
        return any(start <= address < end for start, end in functions)

    counts, total = collections.Counter(), 0
    for stack in samples(args.perf_script):
        for depth, (sym, offset, address) in enumerate(stack):
            if not ours(address):
                continue
            # A caller's address is the return address: one byte back is the call.
            address -= 1 if depth else 0
            i = bisect.bisect_right(addresses, address) - 1
            line = table[i][1] if i >= 0 else "?"
            counts[(line, "self" if depth == 0 else stack[depth - 1][0])] += 1
            total += 1
            break
    if not total:
        sys.exit(f"no samples of {prog_name} in {args.perf_script}")
    print(f"{total} samples in {prog_name}")
    print(f"{'samples':>7} {'share':>6}  {'in':28}  line")
    for (line, callee), n in counts.most_common(args.top):
        print(f"{n:7d} {100 * n / total:5.1f}%  {callee[:28]:28}  {line}")


if __name__ == "__main__":
    main()
