"""Dynamic-depth lobes usable from any SpeechBrain YAML (``!new:dld_brain.lobes.GatedConformerEncoder``)."""

from dld_brain.lobes.conformer import ConformerCTC, GatedConformerEncoder, executed_parameters
from dld_brain.lobes.transformer import GatedTransformerEncoder
from dld_brain.lobes.wavlm import GatedWavLMEncoder, WaveformNormalization, WavLMCTC

__all__ = ["ConformerCTC", "GatedConformerEncoder", "GatedTransformerEncoder", "GatedWavLMEncoder", "WaveformNormalization", "WavLMCTC", "executed_parameters"]
