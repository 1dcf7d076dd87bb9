"""The training floor: fine-tuning CLIP's image tower against attacks, and pretraining the embedded one.

Holds the methods (`methods`: PMG-AFT, TeCoA, FARE, TGA-ZSR, clean fine-tuning, one registered
unit each), the training loop (`loop`: `Trainer`, `TrainConfig`, checkpoints and resumable state),
pretraining the embedded tiny CLIP (`pretrain`) and torchrun's processes (`distributed`).
Imports core/, data/, models/ and attacks/.
"""
