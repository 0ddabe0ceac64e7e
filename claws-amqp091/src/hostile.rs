//! Defences against messages built to hurt: anyone with publish rights can send any headers.
//!
//! lapin's AMQP parser recurses into nested field tables and arrays on its I/O thread, whose
//! stack is the process's default for threads (2 MiB): a message whose headers nest 1,000 deep
//! (7 KB) overflows it and aborts the process, on every restart while the message stays queued.
//! [`protect_parser_stack`](crate::protect_parser_stack), called first thing in `main`, raises
//! that default (`RUST_MIN_STACK`) so that the deepest table a frame can hold (about 18,000
//! levels in RabbitMQ's 128 KiB frames) parses; such a message is then dead-lettered
//! ([`header_depth`] over [`MAX_HEADER_DEPTH`]) and its headers freed on a thread with room for
//! it ([`drop_deep`]).

pub(crate) mod poison;

use std::sync::Once;

use lapin::types::{AMQPValue, FieldTable};

/// Headers nested deeper than this are refused: the message is dead-lettered unread.
pub(crate) const MAX_HEADER_DEPTH: usize = 64;

/// The stack size given to threads that do not choose one (lapin's I/O thread among them):
/// room for the parser's recursion over the deepest table a frame can hold. Virtual memory:
/// only the pages used are committed.
pub(crate) const PARSER_STACK: usize = 256 << 20;

/// Protects the process against messages whose headers nest thousands deep (see the crate
/// docs, "Hostile publishers"): sets `RUST_MIN_STACK` to 256 MiB unless it is set already.
///
/// Call it first thing in `main`, before the async runtime or any other thread starts: the
/// standard library reads the variable once, when it first spawns a thread without an explicit
/// stack size (tokio's worker threads are such threads), and lapin's I/O thread, where AMQP
/// frames are parsed, takes that size. Setting `RUST_MIN_STACK` in the service's environment
/// does the same. The stack is virtual memory: only the pages used are committed.
///
/// ```
/// // First thing in main:
/// claws_amqp091::protect_parser_stack();
/// // ... then build the tokio runtime and the claws.
/// ```
pub fn protect_parser_stack() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        std::env::set_var("RUST_MIN_STACK", PARSER_STACK.to_string());
    }
}

/// Warns once, at the first connection, when nothing protects the parser's stack.
pub(crate) fn check_parser_stack() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_MIN_STACK").is_none() {
            tracing::warn!(
                "RUST_MIN_STACK is not set: a message with headers nested 1,000 deep would abort \
                 this process in lapin's parser; call claws_amqp091::protect_parser_stack() first \
                 thing in main, or set RUST_MIN_STACK=268435456"
            );
        }
    });
}

/// How deep `table` nests, counting no further than `limit + 1` (iterative: a hostile table
/// cannot overflow this walk).
pub(crate) fn header_depth(table: &FieldTable, limit: usize) -> usize {
    let mut deepest = 1;
    let mut stack: Vec<(&AMQPValue, usize)> = table.inner().values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = stack.pop() {
        match value {
            AMQPValue::FieldTable(t) => {
                deepest = deepest.max(depth);
                if depth > limit {
                    return depth;
                }
                stack.extend(t.inner().values().map(|v| (v, depth + 1)));
            }
            AMQPValue::FieldArray(a) => {
                deepest = deepest.max(depth);
                if depth > limit {
                    return depth;
                }
                stack.extend(a.as_slice().iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Drops `value` (a deeply nested table, whose drop recurses) on a thread with a stack large
/// enough for it, so that freeing a hostile message cannot overflow a runtime thread.
pub(crate) fn drop_deep<T: Send + 'static>(value: T) {
    let spawned = std::thread::Builder::new()
        .name("claws-drop-deep".into())
        .stack_size(PARSER_STACK)
        .spawn(move || drop(value));
    if let Err(err) = spawned {
        // No thread: leak it rather than risk the overflow.
        tracing::error!(%err, "cannot free a deeply nested message; leaking it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    fn nested(depth: usize) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(ShortString::from("leaf"), AMQPValue::LongInt(1));
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert(ShortString::from("n"), AMQPValue::FieldTable(t));
            t = outer;
        }
        t
    }

    #[test]
    fn depth_is_counted_without_recursion_and_bounded() {
        assert_eq!(header_depth(&FieldTable::default(), 64), 1);
        assert_eq!(header_depth(&nested(3), 64), 3);
        assert_eq!(header_depth(&nested(70), 64), 65);
        drop_deep(nested(100_000));
    }
}
