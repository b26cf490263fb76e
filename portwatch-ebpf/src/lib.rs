#![no_std]
// The programs live in the binary targets (src/main.rs: the tracer;
// src/owners.rs: the owner iterator); this library exists so the loader can
// name this crate as a build-dependency and be rebuilt when it changes (see
// portwatch/build.rs), and holds what every object needs once.

/// What every eBPF object of this crate needs: a panic handler (no_std) and
/// its license section.
#[macro_export]
macro_rules! object_essentials {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            // The verifier rejects any path that could reach here.
            loop {}
        }

        /// GPL-compatible: the kernel only lends its tracing helpers to such
        /// programs.
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
