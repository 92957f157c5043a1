"""coinseg: weakly supervised lesion segmentation in CT by counterfactual inpainting (COIN)."""

__version__ = "0.1.0"
