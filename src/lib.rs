//! Ebra's command line and local stack.
//!
//! `ebra dev` runs the whole system on one machine — the API and the webhook on one
//! listener, the worker behind an emulation of the SQS event source mapping, the
//! reclaimer on a timer, the provider simulator calling back — against a real Postgres
//! (started here when none answers) and the SQS endpoint in `AWS_ENDPOINT_URL_SQS` or,
//! when unset, the embedded one (`local::sqs_server`), served in this process.
//! `ebra migrate` applies the schema; `ebra bench` measures; `ebra console` serves the
//! operator console against a deployed API, signing its requests with SigV4; `ebra import`
//! adds a CSV file's calls to a campaign, in batches, with a progress bar.

pub mod bench;
pub mod console;
pub mod import;
pub mod local;
