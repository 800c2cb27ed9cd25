"""The server's configuration, read once from the environment: `ServerConfig` and `ConfigError`.

    from serverconfig import ServerConfig
    config = ServerConfig.from_env()      # at setup; a bad value raises one ConfigError naming the variable

`config` holds the object and its table of variables, `values` the parser of each kind of variable, and
`downloads` turns the download settings into the guarded downloader's policy and timeouts. Nothing here
imports torch, generation or lora_loader at import time: every part of the server can import it.
"""

from .config import ServerConfig
from .errors import ConfigError

__all__ = ["ConfigError", "ServerConfig"]
