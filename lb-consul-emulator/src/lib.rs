//! A Consul HTTP API emulator for tests (being written).
