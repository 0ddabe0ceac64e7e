//! Runnable claws services live in `examples/examples/`.
