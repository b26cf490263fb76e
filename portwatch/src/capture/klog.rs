//! The programs' own diagnostics (aya-log records, `watch -v`), forwarded to
//! stderr as `portwatch: kernel LEVEL: message (file:line)`.

use anyhow::{Context as _, Result};
use aya_log::EbpfLogger;
use tokio::{
    io::{unix::AsyncFd, Interest},
    task::JoinHandle,
};

/// aya-log's levels as the loader's `AYA_LOG_LEVEL` numbers them.
pub const OFF: u8 = 0;

/// Writes each record as one stderr line. The messages are the programs'
/// own format strings with numeric arguments only, so nothing untrusted.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The kernel already filtered by level.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level().as_str().to_ascii_lowercase();
        match (record.file(), record.line()) {
            (Some(file), Some(line)) => {
                eprintln!(
                    "portwatch: kernel {level}: {} ({file}:{line})",
                    record.args()
                )
            }
            _ => eprintln!("portwatch: kernel {level}: {}", record.args()),
        }
    }

    fn flush(&self) {}
}

/// Takes the programs' log ring buffer from `ebpf` and forwards its records
/// until the runtime ends.
pub fn forward(ebpf: &mut aya::Ebpf) -> Result<JoinHandle<()>> {
    let logger = EbpfLogger::init_with_logger(ebpf, Stderr)
        .context("reading the eBPF programs' log (aya-log)")?;
    // SAFETY: the logger owns its ring buffer's fd and lives inside the
    // AsyncFd, so the fd stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .context("polling the eBPF programs' log")?;
    Ok(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
