"""tlstrace/trace/_fastpath.c: see there. Its signature is its Python twin's."""

from tlstrace.trace.fastpath import encode_batch as encode_batch
