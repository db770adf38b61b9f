"""dld-brain: dynamic-depth speech networks (gated layer dropping, DLD) for SpeechBrain."""

__version__ = "0.1.0"
