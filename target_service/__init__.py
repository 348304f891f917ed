"""The target service: owns the committed sequence, verifies proposals, streams committed tokens."""
