//! Runnable claws services live in `examples/examples/`; this library holds what they and the
//! tests share: [`loopbus`], a custom claw over a tiny loopback TCP broker, written as the
//! example of "writing your own claw" (see the `claws_test` crate docs).

pub mod loopbus;
