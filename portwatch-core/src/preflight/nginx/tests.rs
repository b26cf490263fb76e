//! Unit tests of the nginx reader.
