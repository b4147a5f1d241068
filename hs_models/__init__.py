"""Pure-PyTorch building blocks of HS-Diffusion head swapping (arXiv 2212.06458).

Nothing in this package imports ComfyUI, so it can be unit-tested, scripted and used for training
anywhere. The ComfyUI glue lives in the sibling ``nodes`` package.
"""
