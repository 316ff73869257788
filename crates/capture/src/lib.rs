//! Reading recorded calls.
