//! Unit tests of the socket unit reader.
