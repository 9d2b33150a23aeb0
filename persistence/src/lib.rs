//! vpp-persistence
