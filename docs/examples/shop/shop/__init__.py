"""The example shop application package."""
