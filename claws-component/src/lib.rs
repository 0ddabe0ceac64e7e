//! The XEP-0114 component claw for claws, and the XMPP-to-AMQP gateway (in progress).
