"""What the tests and the benchmarks share: small data in the official format, a reference loop, op counting."""
