//! vpp-actors
