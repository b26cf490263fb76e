#![no_std]
// The programs live in the `portwatch` binary target (src/main.rs); this empty
// library exists so the loader can name this crate as a build-dependency and
// be rebuilt when it changes (see portwatch/build.rs).
