//! Real servers and fault injection for tests, benchmarks and the demo.

pub mod chaos;
pub mod signal_server;
