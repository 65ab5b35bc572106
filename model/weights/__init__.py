"""Reading weight files into networks: the VGGFace2 pickle (numpy-only unpickler), torch
state_dicts and timm names. May import ``model.nets``; the networks never import this package.
"""
