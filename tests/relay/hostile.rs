//! Bad input to a relay.
