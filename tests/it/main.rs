//! Integration tests: one binary so that Pingora is linked once. Each module starts real
//! origins and the real `stepstone` binary on loopback and speaks real protocols to them.

mod support;

mod cli;
mod forward;
mod reverse;
