//! vpp-market-adapters
