#!/usr/bin/env python3
"""What one eBPF helper call or map lookup costs on this kernel (root).

Loads tiny tracepoint programs straight from bytecode, each doing N calls of
one helper (or N lookups in one map type), attaches each in turn to
syscalls/sys_exit_getppid (which portwatch never hooks), runs 200,000
getppid() calls, and reads the kernel's own accounting (kernel.bpf_stats_enabled,
run_time_ns / run_cnt in the program fd's fdinfo). Per call = (program -
bare program) / N, the median of three rounds. A hot loop: inside a real
bind() the same call costs more (BENCHMARKS.md, 2026-11-25).

Usage: sudo python3 xtask/scripts/helper_cost.py
"""
import ctypes
import os
import struct

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298  # x86_64
CALL, MOV_IMM, MOV_REG, ADD_IMM, EXIT, ST_DW = 0x85, 0xB7, 0xBF, 0x07, 0x95, 0x7A
N = 8
ROUNDS = 3


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhI" if imm >= 0 else "<BBhi", code, (src << 4) | dst, off, imm)


def ld_imm64(dst, value, src=0):
    return insn(0x18, dst, src, 0, value & 0xFFFFFFFF) + insn(0, imm=(value >> 32) & 0xFFFFFFFF)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr))
    fd = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return fd


def load(code):
    prog = ctypes.create_string_buffer(code)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("<IIQQ", attr, 0, 5, len(code) // 8, ctypes.addressof(prog), ctypes.addressof(lic))
    return bpf(5, attr)  # BPF_PROG_LOAD, BPF_PROG_TYPE_TRACEPOINT


def attach(prog_fd):
    tracefs = "/sys/kernel/tracing" if os.path.isdir("/sys/kernel/tracing/events") else "/sys/kernel/debug/tracing"
    tp_id = int(open(f"{tracefs}/events/syscalls/sys_exit_getppid/id").read())
    pattr = bytearray(64)
    struct.pack_into("<IIQQ", pattr, 0, 2, 64, tp_id, 1)
    buf = ctypes.create_string_buffer(bytes(pattr))
    efd = libc.syscall(SYS_PERF_EVENT_OPEN, buf, -1, 0, -1, 8)
    if efd < 0:
        raise OSError(ctypes.get_errno(), "perf_event_open")
    libc.ioctl(efd, 0x40042408, prog_fd)  # PERF_EVENT_IOC_SET_BPF
    libc.ioctl(efd, 0x2400, 0)  # PERF_EVENT_IOC_ENABLE
    return efd


def ns_per_run(prog_fd):
    info = dict(l.split(":", 1) for l in open(f"/proc/self/fdinfo/{prog_fd}").read().splitlines() if ":" in l)
    return int(info["run_time_ns"]) / max(1, int(info["run_cnt"]))


def measure(code):
    fd = load(code)
    efd = attach(fd)
    for _ in range(200_000):
        os.getppid()
    ns = ns_per_run(fd)
    os.close(efd)
    os.close(fd)
    return ns


user_buf = ctypes.create_string_buffer(64)


def helper_body(kind):
    c = b""
    for _ in range(N):
        if kind == "get_current_pid_tgid":
            c += insn(CALL, imm=14)
        elif kind == "ktime_get_boot_ns":
            c += insn(CALL, imm=125)
        elif kind == "jiffies64":
            c += insn(CALL, imm=118)
        elif kind == "get_current_comm":
            c += insn(MOV_REG, 1, 10) + insn(ADD_IMM, 1, imm=-16) + insn(MOV_IMM, 2, imm=16) + insn(CALL, imm=16)
        elif kind == "probe_read_kernel (8 B)":
            # r3 = current task (a kernel address) costs one cheap call too
            c += insn(CALL, imm=35) + insn(MOV_REG, 3, 0) + insn(MOV_REG, 1, 10) + insn(ADD_IMM, 1, imm=-8)
            c += insn(MOV_IMM, 2, imm=8) + insn(CALL, imm=113)
        elif kind == "probe_read_user (8 B)":
            c += ld_imm64(3, ctypes.addressof(user_buf)) + insn(MOV_REG, 1, 10) + insn(ADD_IMM, 1, imm=-32)
            c += insn(MOV_IMM, 2, imm=8) + insn(CALL, imm=112)
    return c + insn(MOV_IMM, 0, imm=0) + insn(EXIT)


def map_body(map_fd, key_size):
    c = b"".join(insn(ST_DW, 10, 0, -64 + o, 0) for o in range(0, key_size, 8))
    for _ in range(N):
        c += ld_imm64(1, map_fd, src=1) + insn(MOV_REG, 2, 10) + insn(ADD_IMM, 2, imm=-64) + insn(CALL, imm=1)
    return c + insn(MOV_IMM, 0, imm=0) + insn(EXIT)


def make_map(mtype, key_size, value_size, entries):
    attr = bytearray(128)
    struct.pack_into("<IIII", attr, 0, mtype, key_size, value_size, entries)
    fd = bpf(0, attr)
    if mtype in (1, 5, 9):  # hash kinds: one element, the key looked up
        key = ctypes.create_string_buffer(key_size)
        value = ctypes.create_string_buffer(value_size * (os.cpu_count() if mtype == 5 else 1))
        uattr = bytearray(128)
        struct.pack_into("<IIQQQ", uattr, 0, fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0)
        bpf(2, uattr)
    return fd


def main():
    old = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    open("/proc/sys/kernel/bpf_stats_enabled", "w").write("1")
    try:
        bare = sorted(measure(helper_body("bare")) for _ in range(ROUNDS))[ROUNDS // 2]
        print(f"bare program: {bare:.1f} ns per run (with the accounting itself)")
        print("| call | ns per call |\n|---|---|")
        for kind in ["get_current_pid_tgid", "jiffies64", "ktime_get_boot_ns", "get_current_comm",
                     "probe_read_kernel (8 B)", "probe_read_user (8 B)"]:
            ns = sorted(measure(helper_body(kind)) for _ in range(ROUNDS))[ROUNDS // 2]
            print(f"| {kind} | {(ns - bare) / N:.1f} |")
        for name, mtype, ks, vs, n in [("percpu hash, 32 B key", 5, 32, 24, 16384),
                                        ("LRU hash, 8 B key", 9, 8, 64, 16384),
                                        ("array", 2, 8, 80, 1), ("percpu array", 6, 8, 160, 1)]:
            runs = []
            for _ in range(ROUNDS):
                mfd = make_map(mtype, ks if mtype in (1, 5, 9) else 4, vs, n)
                runs.append(measure(map_body(mfd, ks)))
                os.close(mfd)
            ns = sorted(runs)[ROUNDS // 2]
            print(f"| lookup, {name} | {(ns - bare) / N:.1f} |")
    finally:
        open("/proc/sys/kernel/bpf_stats_enabled", "w").write(old)


if __name__ == "__main__":
    main()
