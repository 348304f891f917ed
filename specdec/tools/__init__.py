"""Users of the library, never used by it: the benchmark, the load test, the demo, test certificates,
the protobuf generator, and the launcher of a local stack."""
