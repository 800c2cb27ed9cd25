"""Fakes of the remote services the server talks to (Hugging Face, CivitAI, Replicate), on loopback.

Each fake is a real HTTP server on 127.0.0.1 with an ephemeral port, so the code under test runs its
real client stack (huggingface_hub, httpx2) with no internet and no mocking of the client side. They are thin
layers over one core (`core.py`: listeners, request log, file serving; `faults.py`: injected faults).
"""
