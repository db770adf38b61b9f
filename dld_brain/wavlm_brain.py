"""Brain for a WavLM backbone + CTC head: :class:`DynamicDepthCTCBrain` with two optimizers, SpeechBrain-style.

As in SpeechBrain's wav2vec2/WavLM CTC recipes, the pretrained backbone and the freshly initialised head get
their own optimizer and learning-rate schedule: ``opt_class`` / ``lr_annealing`` for the head (everything
outside ``model.encoder``) and ``backbone_opt_class`` / ``lr_annealing_backbone`` for the gated WavLM.
Parameters frozen by configuration (e.g. the feature encoder) are in neither optimizer. Both optimizers and
both schedulers are checkpointed (the schedulers through the YAML's checkpointer, the optimizers here).
"""

from __future__ import annotations

from dld_brain.brain import DynamicDepthCTCBrain, MethodConfigError


class WavLMCTCBrain(DynamicDepthCTCBrain):
    """Static / RDsc / RDLD / DLD training of :class:`dld_brain.lobes.WavLMCTC` with backbone and head optimizers.

    Extra hparams: ``backbone_opt_class`` (required), ``lr_annealing_backbone`` (optional, per step).
    """

    def init_optimizers(self):
        """``self.optimizer`` (head, ``opt_class``) and ``self.backbone_optimizer`` (``backbone_opt_class``)."""
        backbone_opt_class = self.hparams_get("backbone_opt_class")
        if backbone_opt_class is None:
            raise MethodConfigError("WavLMCTCBrain needs backbone_opt_class in the hparams (the optimizer of the "
                                    "WavLM backbone; opt_class is the CTC head's)")
        backbone = [p for p in self.model.encoder.parameters() if p.requires_grad]
        in_backbone = {id(p) for p in backbone}
        head = [p for p in self.modules.parameters() if p.requires_grad and id(p) not in in_backbone]
        self.optimizer = self.opt_class(head)
        self.optimizers_dict = {"model_optimizer": self.optimizer}
        self.backbone_optimizer = None
        if backbone:  # a fully frozen backbone has no optimizer
            self.backbone_optimizer = backbone_opt_class(backbone)
            self.optimizers_dict["backbone_optimizer"] = self.backbone_optimizer
        if self.checkpointer is not None:
            for name, opt in (("optimizer", self.optimizer), ("backbone_optimizer", self.backbone_optimizer)):
                if opt is not None:
                    self.checkpointer.add_recoverable(name, opt)

    def lr_schedules(self) -> list:
        """Both per-step schedules (head: ``lr_annealing``, backbone: ``lr_annealing_backbone``), applied
        before each optimiser step."""
        schedules = super().lr_schedules()
        annealing = self.hparams_get("lr_annealing_backbone")
        if annealing is not None and self.backbone_optimizer is not None:
            schedules.append((annealing, self.backbone_optimizer))
        return schedules
