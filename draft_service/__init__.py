"""The draft service: streams proposals to the target over one bidirectional stream per session."""
