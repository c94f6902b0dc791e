"""The ViSAudio model: the network (``network``: dual-branch DiT, conditions), its frozen or
learned audio codecs (``codecs``), the from-scratch condition encoders (``encoders``) and the
flow-matching maths shared by training and sampling (``flow_matching``). Nothing here imports
the trainer."""

from visaudio.model.network import Conditions, ViSAudio, param_counts

__all__ = ["Conditions", "ViSAudio", "param_counts"]
