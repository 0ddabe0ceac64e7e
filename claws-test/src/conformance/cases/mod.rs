//! The cases, grouped by what they exercise.

mod bad_input;
mod routing;

use std::future::Future;
use std::pin::Pin;

use super::harness::{CaseResult, Harness};

type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// One case.
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    pub(super) run: for<'a> fn(&'a Harness) -> CaseFuture<'a>,
}

macro_rules! cases {
    ($($module:ident :: $name:ident => $about:literal,)*) => {
        pub(super) const ALL: &[Case] = &[$(Case {
            name: stringify!($name),
            about: $about,
            run: |h| Box::pin($module::$name(h)),
        },)*];
    };
}

cases! {
    routing::direct_full_jid => "a stanza to a full JID reaches that instance only, every Via field right",
    bad_input::invalid_jid => "invalid JIDs are refused with Error::InvalidJid",
}
