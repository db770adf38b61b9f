"""Data preparation for the dld-brain recipes: CSV manifests in SpeechBrain's schema."""
