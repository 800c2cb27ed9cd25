"""Test support, not product: everything the tests and the developer scripts (soak, bench, predict on tiny
weights) need to run the real server offline.

- `tiny_weights`: random tiny stand-ins of the four weights folders (`python -m weights.tiny DIR`).
- `fakes/`: Hugging Face, CivitAI, Replicate and plain-file servers on 127.0.0.1, with injectable faults,
  all over one fake-server core (`fakes/core.py`, `fakes/faults.py`).
- `lora_fixtures`: LoRA files in every supported format for a given model, with the ΔW each must make.
- `lora_sites`: tiny LoRAs served by the fakes, and the environment that points a server at them.
- `cog_server`: the real Cog HTTP server in a subprocess.
- `fetch_workers`: LoRA fetches in another process, for tests of a cache shared between processes.
- `helpers`: run a request through a service and read its files back.

Nothing under `generation/`, `lora_loader/`, `weights/` (but the `weights.tiny` command) or `predict.py`
imports this package.
"""
