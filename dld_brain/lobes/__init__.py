"""Dynamic-depth lobes usable from any SpeechBrain YAML (``!new:dld_brain.lobes.GatedConformerEncoder``)."""

from dld_brain.lobes.conformer import ConformerCTC, GatedConformerEncoder, executed_parameters

__all__ = ["ConformerCTC", "GatedConformerEncoder", "executed_parameters"]
