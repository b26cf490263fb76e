//! A command line as /proc gives it (arguments joined with single spaces,
//! untrusted): what portwatch reads from one.

/// The value of the first of `names` on a command line (joined with single
/// spaces), as `--name value` or `--name=value`.
pub fn flag<'a>(cmdline: &'a str, names: &[&str]) -> Option<&'a str> {
    let mut words = cmdline.split(' ');
    while let Some(w) = words.next() {
        for name in names {
            if w == *name {
                return words.next().filter(|v| !v.is_empty());
            }
            if let Some(v) = w.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return Some(v).filter(|v| !v.is_empty());
            }
        }
    }
    None
}
