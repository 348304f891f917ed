"""What the three services share: protobuf <-> core conversion, server and channel construction, the
error interceptor, security, telemetry, the session table and the Python client."""
