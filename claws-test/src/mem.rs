//! [`MemFactory`]: the conformance suite's factory for the in-memory claw.

use std::sync::Arc;

use async_trait::async_trait;
use claws_core::mem::MemBroker;
use claws_core::{Claw, Packet, Result};

use crate::conformance::{ClawFactory, Options};

/// Makes [`MemClaw`](claws_core::mem::MemClaw)s on one [`MemBroker`], configured per
/// [`Options`]; cleanup deletes the JIDs' queues.
#[derive(Debug, Clone, Default)]
pub struct MemFactory {
    broker: MemBroker,
}

impl MemFactory {
    /// A factory over a new broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory over `broker`.
    pub fn with_broker(broker: MemBroker) -> Self {
        Self { broker }
    }

    /// The broker the claws are made on.
    pub fn broker(&self) -> &MemBroker {
        &self.broker
    }
}

#[async_trait]
impl ClawFactory for MemFactory {
    fn name(&self) -> String {
        "mem (claws_core::mem)".into()
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        let claw = self
            .broker
            .claw_builder(jid)?
            .name(opts.name.as_deref().unwrap_or("mem"))
            .max_deliveries(opts.max_deliveries)
            .prefetch(opts.prefetch)
            .subscriptions(opts.subscriptions)
            .build()?;
        Ok(Arc::new(claw))
    }

    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        Some(self.broker.dead_letters())
    }

    async fn cleanup(&self, jids: &[String]) {
        for name in self.broker.queue_names() {
            let owned = name.split_once(':').is_some_and(|(_, jid)| {
                jids.iter()
                    .any(|j| j == jid || j.split('/').next() == Some(jid))
            });
            if owned {
                self.broker.delete_queue(&name);
            }
        }
    }
}
