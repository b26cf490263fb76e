//! Zeroing and copying structures without `memset`/`memmove`.
//!
//! For a struct literal with `..Default::default()`, a `[0; N]` array or a
//! copy of a whole struct, LLVM's BPF backend emits calls to the
//! `memset`/`memmove` of compiler_builtins, which are byte-at-a-time loops
//! run as BPF subprograms: zeroing the 160-byte `Event` cost about 700
//! instructions, most of a folded failing bind's time (BENCHMARKS.md,
//! the table of instruction counts). These helpers move eight bytes per instruction instead;
//! volatile accesses keep LLVM from turning them back into the calls.

use core::mem::{align_of, size_of, MaybeUninit};

/// Words in a `T` that these helpers accept: a multiple of eight bytes,
/// aligned to eight.
const fn words<T>() -> usize {
    assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8);
    size_of::<T>() / 8
}

/// Zeroes `*dst` eight bytes at a time (four for four-byte aligned types).
///
/// # Safety
/// `dst` is valid for writes, and all-zero bytes are a valid `T` (plain
/// `#[repr(C)]` integers and arrays).
#[inline(always)]
pub unsafe fn zero<T>(dst: *mut T) {
    let wide = const {
        assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4);
        align_of::<T>() >= 8 && size_of::<T>().is_multiple_of(8)
    };
    if wide {
        let p = dst.cast::<u64>();
        let mut i = 0;
        while i < size_of::<T>() / 8 {
            // SAFETY: word `i` lies inside `*dst`, valid for writes (the
            // caller's contract) and 8-byte aligned (`wide`).
            unsafe { p.add(i).write_volatile(0) };
            i += 1;
        }
    } else {
        let p = dst.cast::<u32>();
        let mut i = 0;
        while i < size_of::<T>() / 4 {
            // SAFETY: word `i` lies inside `*dst`, valid for writes (the
            // caller's contract) and 4-byte aligned (asserted above).
            unsafe { p.add(i).write_volatile(0) };
            i += 1;
        }
    }
}

/// Copies `*src` to `*dst` eight bytes at a time.
///
/// # Safety
/// Both are valid, aligned and do not overlap; `T` is plain data.
#[inline(always)]
pub unsafe fn copy<T>(dst: *mut T, src: *const T) {
    let n = const { words::<T>() };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < n {
        // SAFETY: word `i` lies inside both `T`s, which are valid, apart and
        // 8-byte aligned (the caller's contract; `words` checks the size).
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}

/// Runs `f` on a zeroed `T` on the stack, built without `memset`. (A
/// function returning the zeroed value would be no good: LLVM turns the
/// copy of a value it knows is zero back into a `memset` call.)
///
/// # Safety
/// All-zero bytes are a valid `T`.
#[inline(always)]
pub unsafe fn with_zeroed<T, R>(f: impl FnOnce(&mut T) -> R) -> R {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: `v` is this frame's own, valid for writes; once zeroed it is a
    // valid `T` (the caller's contract), so the reference is to an
    // initialised value.
    unsafe {
        zero(v.as_mut_ptr());
        f(&mut *v.as_mut_ptr())
    }
}

/// The current thread's comm, NUL padded. The helper writes all 16 bytes
/// (zeros on failure), so the buffer needs no zeroing first.
#[inline(always)]
pub fn comm() -> [u8; 16] {
    let mut buf = MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper writes all 16 bytes of `buf` (its size, passed), on
    // failure too, and any 16 bytes are a valid `[u8; 16]`.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(buf.as_mut_ptr().cast(), 16);
        core::mem::transmute::<[u64; 2], [u8; 16]>(buf.assume_init())
    }
}
