"""PyTorch reference implementation of the MatFormer-PLE architecture.

See docs/model-format.md for the model directory format and forward math.
"""
