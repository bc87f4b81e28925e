"""QIOChannel and its subclasses (QEMU's io/ model).  See base.py."""
from .base import (FEATURE_FD_PASS, FEATURE_LISTEN, FEATURE_READ_MSG_PEEK, FEATURE_SEEKABLE,
                   FEATURE_SHUTDOWN, FEATURE_WRITE_ZERO_COPY, IO_ERR, IO_HUP, IO_IN, IO_OUT,
                   MAX_FDS, SHUTDOWN_BOTH, SHUTDOWN_READ, SHUTDOWN_WRITE, QIOChannel,
                   UnexpectedEOFError, Watch)
from .command import QIOChannelCommand
from .file import QIOChannelFile
from .listener import QIONetListener
from .memory import QIOChannelBuffer, QIOChannelNull
from .socket import QIOChannelSocket, new_fd
from .tls import QIOChannelTLS
from .websock import QIOChannelWebsock

__all__ = [
    "FEATURE_FD_PASS", "FEATURE_LISTEN", "FEATURE_READ_MSG_PEEK", "FEATURE_SEEKABLE",
    "FEATURE_SHUTDOWN", "FEATURE_WRITE_ZERO_COPY", "IO_ERR", "IO_HUP", "IO_IN", "IO_OUT",
    "MAX_FDS", "SHUTDOWN_BOTH", "SHUTDOWN_READ", "SHUTDOWN_WRITE", "QIOChannel",
    "QIOChannelBuffer", "QIOChannelCommand", "QIOChannelFile", "QIOChannelNull",
    "QIOChannelSocket", "QIOChannelTLS", "QIOChannelWebsock", "QIONetListener", "UnexpectedEOFError", "Watch", "new_fd",
]
