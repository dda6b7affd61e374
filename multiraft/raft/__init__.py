"""One group's Raft as a pure state machine: no I/O, no clock, no global randomness."""
