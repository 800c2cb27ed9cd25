"""Request -> images: sizes, seeds, pipelines (dev/schnell x txt2img/img2img/inpaint), the precision
path, safety checking and output files. Never imports cog or predict.py."""
