//! vpp-risk
