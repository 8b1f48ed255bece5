"""Pure PyTorch layer: data, models, patch augmentation, attacks, training engine. Imports nothing from Ray
(except `trainables.trainable`, the Ray Tune edge)."""
