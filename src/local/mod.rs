//! The local stack behind `ebra dev`.

mod event_source;
mod postgres;
mod sqs;
pub mod sqs_server;
mod stack;

pub use event_source::{delete_succeeded, sqs_event, EventSourceMapping};
pub use postgres::LocalPostgres;
pub use sqs::{ensure_queues, local_sqs_client, LocalSqs};
pub use stack::{
    dev_pool_size, run_dev, serve_until_stopped, start_stack, DevOptions, RunningStack, StackParts,
};
