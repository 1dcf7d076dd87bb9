"""pmg_core: Pre-trained Model Guided Adversarial Fine-Tuning (PMG-AFT) for CLIP, with baselines."""
__version__ = "0.1.0"
