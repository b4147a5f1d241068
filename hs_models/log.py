"""The pack's single logger (ComfyUI shows it in its console and log file)."""

import logging

logger = logging.getLogger("comfyui_hs_diffusion")
