"""SDXL LoRA training, kohya-format export, local generation and identity evaluation.

Domain code only: no Prefect here (tasks/ and flows/ wrap it). torch, diffusers,
peft and accelerate come from the ``train`` extra and are imported lazily, so the
rest of the package works without them.
"""
