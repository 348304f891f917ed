"""The orchestrator: public API, routing, session lifecycle and failover."""
