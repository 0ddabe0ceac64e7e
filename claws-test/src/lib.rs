//! The conformance suite every claw must pass, fault injection, and scripted scenarios. (in progress)
