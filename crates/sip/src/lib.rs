//! SIP user agent core.
