//! The conformance suite every claw must pass, fault injection, and scripted scenarios.

pub mod conformance;
pub mod fault;
pub mod mem;
pub mod scenario;
