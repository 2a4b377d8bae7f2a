"""Model loading (one way for every LM and encoder) and the LM handle the engine drives."""

from inferenceguard.models.loading import LM, Encoder, load_encoder, load_lm, pick_device, pick_dtype

__all__ = ["LM", "Encoder", "load_encoder", "load_lm", "pick_device", "pick_dtype"]
