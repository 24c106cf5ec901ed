//! Ebra local stack
