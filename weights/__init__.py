"""Base weights: where FLUX.1 [dev], [schnell] and the two safety models live, and how they get there.

`weights.layout` names the folders and files, `weights.download` finds or fetches them from Hugging
Face, and `python -m weights.tiny DIR` writes random offline stand-ins in the same layout.
"""
