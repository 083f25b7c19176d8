//! Core tests: quick start, restart without repeats, crash safety, config errors, state CLI.
