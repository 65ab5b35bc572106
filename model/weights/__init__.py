"""Reading weight files into networks: the VGGFace2 pickle (numpy-only unpickler), torch
state_dicts, timm names and timm's hub (``--pretrained``, :func:`model.weights.pretrained.load_pretrained`);
checking ``--pretrained`` before a run starts (``precheck``) and naming a file by its sha256
(``checksums``). May import ``model.nets``; the networks never import this package.
"""
