//! The cases, grouped by what they exercise.

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
}
