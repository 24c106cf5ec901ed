//! The vapi contract fake: being written (see tests/common/fakes/retell.rs for the shape).
