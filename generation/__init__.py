"""Request -> images: sizes, seeds, pipelines (dev/schnell x txt2img/img2img/inpaint), the execution paths
(plain, compiled bf16, fp8) with their setup and residency plan, safety checking and output files. Never imports
cog or predict.py."""

import logging

# diffusers' FLUX pipelines import transformers' image processors for IP-Adapter support, which warns
# that torchvision is missing; the PIL processors we use need no torchvision, so the warning is noise.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
