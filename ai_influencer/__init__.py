"""ai-influencer: a persona dataset and SDXL LoRA pipeline.

The domain library lives in this package and never imports Prefect; the
orchestration layers (``tasks/``, ``flows/``, ``blocks/``) wrap it.
"""

__version__ = "0.1.0"
