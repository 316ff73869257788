//! DTMF receiver and generator.
