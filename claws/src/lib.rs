//! claws: XMPP stanzas between services over message brokers. Facade crate and the claws CLI. (in progress)
