//! Empty on purpose: the programs are the binary target (`src/main.rs`). The
//! library target only exists so that the agent can depend on this crate and
//! be rebuilt when it changes.
#![no_std]
