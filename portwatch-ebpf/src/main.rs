//! portwatch's eBPF programs: catch failed bind() and listen() calls.
//!
//! Two backends feed one event path (`emit`): the syscall tracepoints
//! (`bind::sys_*`, `listen::sys_*`) and fexit on the inet bind/listen return
//! paths, plus io_uring's bind/listen completions (`uring`). Every kernel structure offset comes from the loader (`CONFIG`),
//! which reads them from the running kernel's BTF.
#![no_std]
// `sock::cast`: the kfunc call is written as one instruction word.
#![feature(asm_experimental_arch)]
#![no_main]
// Every `unsafe` block says why it holds, on a `// SAFETY:` line before it
// (`cargo xtask test` runs clippy for the BPF target to keep it so).
#![deny(clippy::undocumented_unsafe_blocks)]

mod bind;
mod config;
mod diag;
mod emit;
mod holders;
mod life;
mod listen;
mod mem;
mod sock;
mod state;
mod uring;

portwatch_ebpf::object_essentials!();
